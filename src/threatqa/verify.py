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

from threatqa.errors import IngestError, ThreatQAError
from threatqa.ingest import file_sha256, iter_files, read_document
from threatqa.store import passage_sha256

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


def answers_from_json(data: Any) -> list[dict[str, Any]]:
    """Answers in a saved file: one answer object, a list of them, or audit records holding them."""
    items = data if isinstance(data, list) else [data]
    answers = []
    for item in items:
        if not isinstance(item, dict):
            raise ThreatQAError("expected answer objects (from `threatqa ask --json` or /api/ask)")
        payload = item.get("payload", item)  # an exported audit record carries the answer as payload
        if "passages" not in payload:
            continue  # feedback records, for instance
        answers.append(payload)
    return answers


def verify_answers(answers: Iterable[dict[str, Any]], docs_dir: Path) -> list[Finding]:
    """One finding per cited passage."""
    by_hash: dict[str, str] | None = None  # sha256 -> path, computed once if a document is missing
    findings = []
    for answer in answers:
        for passage in answer.get("passages", []):
            try:
                finding, by_hash = _verify_passage(answer.get("question", ""), passage, docs_dir, by_hash)
            except (KeyError, TypeError, ValueError) as exc:
                raise ThreatQAError(f"not a citation (missing or bad field {exc}): {str(passage)[:80]}") from None
            findings.append(finding)
    return findings


def _verify_passage(
    question: str, passage: dict[str, Any], docs_dir: Path, by_hash: dict[str, str] | None
) -> tuple[Finding, dict[str, str] | None]:
    source, start, end, quote = passage["source"], int(passage["start"]), int(passage["end"]), passage["text"]
    cited_hash = passage.get("document_sha256")

    def found(status: str, detail: str) -> Finding:
        return Finding(question, int(passage.get("rank", 0)), source, start, end, status, detail)

    if passage_sha256(quote) != passage.get("passage_sha256", passage_sha256(quote)):
        return found("passage_differs", "the saved quote does not match its own passage_sha256"), by_hash
    path = docs_dir / source
    if not path.is_file() or docs_dir.resolve() not in path.resolve().parents:
        if by_hash is None:
            by_hash = {file_sha256(p): p.relative_to(docs_dir).as_posix() for p in iter_files(docs_dir)}
        if cited_hash in by_hash:
            moved = by_hash[cited_hash]
            return found("document_moved", f"the document (same sha256) is now at {moved}"), by_hash
        return found("document_removed", f"{source} is no longer in {docs_dir}"), by_hash
    try:
        document = read_document(path, source)
    except IngestError as exc:
        return found("unreadable", f"{source} cannot be read now: {exc}"), by_hash
    at_offsets = document.text[start:end] == quote
    if document.sha256 == cited_hash and at_offsets:
        return found(HOLDS, "same document (sha256), same text at the same offsets"), by_hash
    if document.sha256 == cited_hash:
        return found("passage_differs", "the document is unchanged but the quote is not at those offsets"), by_hash
    if at_offsets:
        detail = "the document was edited (sha256 differs); the quote is still at the same offsets"
    elif (moved_to := document.text.find(quote)) >= 0:
        detail = f"the document was edited; the quote moved to characters {moved_to}-{moved_to + len(quote)}"
    else:
        now = document.text[start:end]
        detail = f"the document was edited; the quote is gone (those offsets now read {now[:60]!r})"
    return found("document_edited", detail), by_hash


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
