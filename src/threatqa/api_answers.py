"""Routes for one logged answer and for original files, behind the same access checks as the rest.

`/answers/<id>` re-renders an answer from the audit log with a verify status per citation;
`/answers/<id>.md` and `.json` export it; `/answers/<id>/passages/<n>` shows passage n in its
document. An auditor may open and verify any logged answer; the document around a passage is
shown only to those who may read the document. `/api/documents/<id>/file` serves an indexed
document's original file, found by its document id only (never by a path from the request), from
inside the docs folder.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

from fastapi import FastAPI, Request
from fastapi.responses import FileResponse, HTMLResponse, JSONResponse, PlainTextResponse, Response

from threatqa.answer import Answer, format_markdown, plain_text
from threatqa.auth import request_access
from threatqa.config import Settings
from threatqa.engine import Engine
from threatqa.errors import ThreatQAError
from threatqa.index import DocumentInfo
from threatqa.policy import Access
from threatqa.store import passage_sha256
from threatqa.ui_pages import Check, answer_page, context_page
from threatqa.verify import verify_answers

ANSWER_ID = re.compile(r"^[0-9a-f]{32}$")
# what a browser may render from the docs folder: anything else is a download, and HTML is shown as text
# (a document's scripts must never run on this origin)
MEDIA_TYPES = {
    ".pdf": "application/pdf",
    ".txt": "text/plain; charset=utf-8",
    ".md": "text/plain; charset=utf-8",
    ".markdown": "text/plain; charset=utf-8",
    ".html": "text/plain; charset=utf-8",
    ".htm": "text/plain; charset=utf-8",
}


def _not_found(what: str) -> JSONResponse:
    return JSONResponse({"detail": f"{what} not found"}, status_code=404)


AUDITOR = "auditor"


def checkable(engine: Engine, access: Access) -> list[DocumentInfo]:
    """The documents whose citations `access` may check: any indexed one for an auditor, else the readable."""
    return engine.index.documents() if AUDITOR in access.roles else engine.documents(access)


def add_answer_routes(app: FastAPI, settings: Settings, engine: Engine) -> None:
    def logged(answer_id: str, request: Request, audit: bool = True) -> tuple[Answer, Any] | None:
        """The logged answer, if the requester may see it (`audit`: an auditor may see any)."""
        if not ANSWER_ID.match(answer_id):
            return None
        access = request_access(settings, request.headers)
        return engine.logged_answer(answer_id, access, every=audit and AUDITOR in access.roles)

    @app.get("/answers/{name}")
    def answer(name: str, request: Request) -> Response:
        """The permalink page (`<id>`), or the answer exported as Markdown (`<id>.md`) or JSON (`<id>.json`)."""
        answer_id, _, suffix = name.partition(".")
        found = logged(answer_id, request)
        if found is None or suffix not in ("", "md", "json"):
            return _not_found("answer")
        answer, record = found
        link = f"{settings.root_path}/answers/{answer_id}"
        disposition = {"Content-Disposition": f'inline; filename="answer-{answer_id}.{suffix}"'}
        if suffix == "md":
            return PlainTextResponse(format_markdown(answer, link), media_type="text/markdown", headers=disposition)
        if suffix == "json":
            audit = {"seq": record.seq, "time": record.time, "hash": record.hash, "user": record.user}
            body = answer.to_json() | {"permalink": link, "audit": audit}
            return JSONResponse(body, headers=disposition)
        checks = _checks(answer, settings, engine, request_access(settings, request.headers))
        return HTMLResponse(answer_page(answer, record.time, record.user, checks, plain_text(answer, link)))

    @app.get("/answers/{answer_id}/passages/{rank}")
    def in_context(answer_id: str, rank: int, request: Request) -> Response:
        """Passage `rank` of an answer inside its document, the exact span marked and scrolled into view."""
        found = logged(answer_id, request, audit=False)  # the whole document: for its readers only
        passage = next((p for p in found[0].passages if p.rank == rank), None) if found else None
        if found is None or passage is None:
            return _not_found("passage")
        try:
            document = engine.index.document(passage.citation.document_id)
        except KeyError:
            return _not_found("the passage's document (it is no longer indexed)")
        return HTMLResponse(context_page(found[0], passage, document.text))

    @app.get("/api/documents/{document_id}/file")
    def original(document_id: str, request: Request) -> Response:
        """The original file of an indexed document the requester may read, by its id."""
        readable = engine.documents(request_access(settings, request.headers))
        info = next((d for d in readable if d.id == document_id), None)
        path = _inside(settings.docs, info.path) if info else None
        if info is None or path is None:
            return _not_found("document")
        media = MEDIA_TYPES.get(path.suffix.lower(), "application/octet-stream")
        inline = "inline" if media != "application/octet-stream" else "attachment"
        headers = {"Content-Disposition": f"{inline}; filename*=UTF-8''{_filename(path.name)}"}
        return FileResponse(path, media_type=media, headers=headers)


def _inside(docs: Path, relative: str) -> Path | None:
    """The file at `relative` under the docs folder, or None when it is missing or resolves outside it."""
    root = docs.resolve()
    path = (root / relative).resolve()
    return path if path.is_file() and root in path.parents else None


def _filename(name: str) -> str:
    from urllib.parse import quote

    return quote(name, safe="")


def _checks(answer: Answer, settings: Settings, engine: Engine, access: Access) -> dict[tuple[str, int, int], Check]:
    """Each citation's verify status now, by (source, start, end); a copy in another format is checked
    with its own text, read back from the index by its offsets and hash."""
    cited = []
    for passage in answer.passages:
        for cite in passage.sources:
            text = passage.text if cite is passage.citation else _indexed_text(engine, cite)
            if text is not None:
                cited.append({"rank": passage.rank, "text": text, "source": cite.source, "start": cite.start,
                              "end": cite.end, "document_sha256": cite.document_sha256,
                              "passage_sha256": cite.passage_sha256})  # fmt: skip
    try:
        findings = verify_answers([{"question": answer.question, "passages": cited}], settings.docs,
                                  checkable(engine, access))  # fmt: skip
    except ThreatQAError:
        return {}
    return {(f.source, f.start, f.end): Check(f.ok, f.status, f.detail) for f in findings}


def _indexed_text(engine: Engine, cite: Any) -> str | None:
    try:
        text = engine.index.document(cite.document_id).text[cite.start : cite.end]
    except KeyError:
        return None
    return text if passage_sha256(text) == cite.passage_sha256 else None
