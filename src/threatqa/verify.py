"""Checking citations against the documents as they are now, and replaying logged questions.

A citation holds when its document is still at the cited path with the cited sha256 and the
quoted text is still between the cited offsets. Otherwise the finding says what changed: the
document was edited (and whether the quote survived, at the same or other offsets), moved to
another path, or removed.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from threatqa.errors import IngestError, ThreatQAError
from threatqa.ingest import Document, file_sha256, iter_files, read_document
from threatqa.store import DocumentInfo, passage_sha256

HOLDS = "holds"


@dataclass(frozen=True)
class Finding:
    """The state of one citation now."""

    question: str
    rank: int
    source: str
    start: int
    end: int
    status: str  # holds | document_edited | document_moved | document_removed | passage_differs | unreadable
    detail: str

    @property
    def ok(self) -> bool:
        return self.status == HOLDS


class Citation(BaseModel):
    """One cited passage as saved from an answer: the fields a check needs, validated."""

    model_config = ConfigDict(extra="ignore")
    source: str = Field(max_length=1000)
    start: int = Field(ge=0)
    end: int = Field(ge=0)
    text: str
    rank: int = 0
    document_sha256: str | None = None
    passage_sha256: str | None = None


def answers_from_json(data: Any, max_citations: int | None = None) -> list[dict[str, Any]]:
    """Answers in a saved file: one answer object, a list of them, or audit records holding them.
    Each cited passage is validated (a clear error names the first bad one); more than
    `max_citations` citations in all is refused."""
    items = data if isinstance(data, list) else [data]
    answers, count = [], 0
    for item in items:
        if not isinstance(item, dict):
            raise ThreatQAError("expected answer objects (from `threatqa ask --json` or /api/ask)")
        payload = item.get("payload", item)  # an exported audit record carries the answer as payload
        if not isinstance(payload, dict) or "passages" not in payload:
            continue  # feedback records, for instance
        passages = payload["passages"]
        if not isinstance(passages, list):
            raise ThreatQAError("an answer's passages must be a list of citations")
        count += len(passages)
        if max_citations is not None and count > max_citations:
            raise ThreatQAError(f"more than {max_citations} citations in one request; send them in parts")
        question = payload.get("question", "")
        answers.append({"question": question if isinstance(question, str) else "", "passages": passages})
    return answers


def _citation(passage: Any) -> Citation:
    try:
        return Citation.model_validate(passage)
    except ValidationError as exc:
        problem = exc.errors()[0]
        where = ".".join(str(p) for p in problem["loc"]) or "citation"
        raise ThreatQAError(f"not a citation ({where}: {problem['msg']})") from None


def verify_answers(
    answers: Iterable[dict[str, Any]], docs_dir: Path, indexed: list[DocumentInfo] | None = None
) -> list[Finding]:
    """One finding per cited passage. With `indexed` (the web server), only those documents are read
    and looked in for a moved one; without it (the CLI, run by an operator) the whole docs folder is.
    Each document is read once however many citations name it."""
    files = _Files(docs_dir, indexed)
    return [
        _verify_passage(answer.get("question", ""), _citation(passage), files)
        for answer in answers
        for passage in answer.get("passages", [])
    ]


class _Files:
    """The documents a check may read, each read at most once."""

    def __init__(self, docs_dir: Path, indexed: list[DocumentInfo] | None) -> None:
        self.docs_dir, self.indexed = docs_dir, indexed
        self._read: dict[str, Document | IngestError] = {}
        self._by_hash: dict[str, str] | None = None

    def exists(self, source: str) -> bool:
        if self.indexed is not None and source not in {d.path for d in self.indexed}:
            return False
        path = self.docs_dir / source
        return path.is_file() and self.docs_dir.resolve() in path.resolve().parents

    def read(self, source: str) -> Document:
        if source not in self._read:
            try:
                self._read[source] = read_document(self.docs_dir / source, source)
            except IngestError as exc:
                self._read[source] = exc
        found = self._read[source]
        if isinstance(found, IngestError):
            raise found
        return found

    def moved(self, sha256: str | None) -> str | None:
        if self._by_hash is None:
            if self.indexed is not None:
                self._by_hash = {d.sha256: d.path for d in self.indexed if self.exists(d.path)}
            else:
                self._by_hash = {
                    file_sha256(p): p.relative_to(self.docs_dir).as_posix() for p in iter_files(self.docs_dir)
                }
        return self._by_hash.get(sha256 or "")


def _verify_passage(question: str, cite: Citation, files: _Files) -> Finding:
    source, start, end, quote, cited_hash = cite.source, cite.start, cite.end, cite.text, cite.document_sha256

    def found(status: str, detail: str) -> Finding:
        return Finding(question, cite.rank, source, start, end, status, detail)

    if passage_sha256(quote) != (cite.passage_sha256 or passage_sha256(quote)):
        return found("passage_differs", "the saved quote does not match its own passage_sha256")
    if not files.exists(source):
        moved = files.moved(cited_hash)
        if moved is not None:
            return found("document_moved", f"the document (same sha256) is now at {moved}")
        return found("document_removed", f"{source} is no longer among the indexed documents")
    try:
        document = files.read(source)
    except IngestError as exc:
        return found("unreadable", f"{source} cannot be read now: {exc}")
    at_offsets = document.text[start:end] == quote
    if document.sha256 == cited_hash and at_offsets:
        return found(HOLDS, "same document (sha256), same text at the same offsets")
    if document.sha256 == cited_hash:
        return found("passage_differs", "the document is unchanged but the quote is not at those offsets")
    if at_offsets:
        detail = "the document was edited (sha256 differs); the quote is still at the same offsets"
    elif (moved_to := document.text.find(quote)) >= 0:
        detail = f"the document was edited; the quote moved to characters {moved_to}-{moved_to + len(quote)}"
    else:
        now = document.text[start:end]
        detail = f"the document was edited; the quote is gone (those offsets now read {now[:60]!r})"
    return found("document_edited", detail)


@dataclass(frozen=True)
class ReplayRow:
    status: str  # unchanged | moved | new | gone
    old_rank: int | None
    new_rank: int | None
    source: str
    old_span: str
    new_span: str
    text: str


def compare_answers(old: dict[str, Any], new: dict[str, Any]) -> list[ReplayRow]:
    """Side by side: which cited passages are unchanged, moved (same text elsewhere), new or gone."""
    rows: list[ReplayRow] = []
    new_by_hash = {p["passage_sha256"]: p for p in new["passages"]}
    old_hashes = {p["passage_sha256"] for p in old["passages"]}
    for p in old["passages"]:
        match = new_by_hash.get(p["passage_sha256"])
        if match is None:
            rows.append(ReplayRow("gone", p["rank"], None, p["source"], _span(p), "", p["text"]))
            continue
        same = (match["source"], match["start"], match["end"], match["rank"]) == (
            p["source"], p["start"], p["end"], p["rank"],
        )  # fmt: skip
        status = "unchanged" if same else "moved"
        rows.append(ReplayRow(status, p["rank"], match["rank"], match["source"], _span(p), _span(match), p["text"]))
    for p in new["passages"]:
        if p["passage_sha256"] not in old_hashes:
            rows.append(ReplayRow("new", None, p["rank"], p["source"], "", _span(p), p["text"]))
    return rows


def _span(passage: dict[str, Any]) -> str:
    return f"{passage['source']}:{passage['start']}-{passage['end']}"


def format_findings(findings: list[Finding]) -> str:
    if not findings:
        return "no citations to verify"
    lines = [
        f"{'OK ' if f.ok else 'BAD'} [{f.rank}] {f.source}:{f.start}-{f.end} {f.status}: {f.detail}" for f in findings
    ]
    bad = sum(not f.ok for f in findings)
    lines.append(f"{len(findings) - bad} of {len(findings)} citations hold" + (f"; {bad} do not" if bad else ""))
    return "\n".join(lines)


def format_replay(rows: list[ReplayRow]) -> str:
    """One line per cited passage: status, rank then -> now, where then -> now, the quote's start."""
    if not rows:
        return "no passages cited then or now"
    lines = []
    for row in rows:
        ranks = f"#{row.old_rank or '-'} -> #{row.new_rank or '-'}"
        where = f"{row.old_span or '(not cited)'} -> {row.new_span or '(not cited)'}"
        lines.append(f'{row.status:9} {ranks:9} {where}  "{" ".join(row.text.split())[:60]}..."')
    counts = {status: sum(r.status == status for r in rows) for status in ("unchanged", "moved", "new", "gone")}
    lines.append(", ".join(f"{n} {status}" for status, n in counts.items()))
    return "\n".join(lines)
