"""Stage 6: hits -> `Answer`: quoted passages with citations, and their JSON and text forms.

Nothing here generates text about the documents: a passage is the document's own text between
two offsets, and everything else is fixed framing.
"""

from __future__ import annotations

import csv
from dataclasses import asdict, dataclass
from typing import IO, Any

from threatqa.retrieval import Retrieval
from threatqa.store import DocumentInfo, passage_sha256

ABSTAIN_TEXT = "No passage in the documents answers this closely enough."


@dataclass(frozen=True)
class Citation:
    """Where a quoted passage comes from, precisely enough to check it later."""

    source: str  # document path relative to the docs folder
    document_id: str
    title: str
    date: str | None
    start: int
    end: int
    page: int | None
    page_end: int | None
    paragraph: int
    paragraph_end: int
    line_start: int
    line_end: int
    document_sha256: str
    passage_sha256: str
    index_version: str
    model: str | None
    date_source: str | None = None  # where the date was found: front matter, dateline, file metadata...

    def location(self) -> str:
        """'p. 3', 'pp. 3-4', 'para 2' or 'paras 2-4'."""
        if self.page is not None:
            end = self.page_end or self.page
            return f"p. {self.page}" if end == self.page else f"pp. {self.page}-{end}"
        if self.paragraph_end != self.paragraph:
            return f"paras {self.paragraph}-{self.paragraph_end}"
        return f"para {self.paragraph}"


@dataclass(frozen=True)
class Passage:
    rank: int
    text: str
    score: float
    relevance: float
    lexical_score: float | None
    dense_score: float | None
    rerank_score: float | None
    citation: Citation

    def reference(self) -> str:
        """One-line reference: <title>, <date>, para N / p. N: "quote"."""
        cite = self.citation
        quote = " ".join(self.text.split())
        return f'{cite.title}, {cite.date or "undated"}, {cite.location()}: "{quote}"'


@dataclass(frozen=True)
class Answer:
    question: str
    answered: bool
    mode: str
    passages: tuple[Passage, ...]
    notices: tuple[str, ...]
    index_version: str
    model: str | None
    searched: tuple[str, ...]  # paths of the documents that were searched
    id: str | None = None  # the audit record that logged this answer

    def to_json(self) -> dict[str, Any]:
        """The `ask --json` / `/api/ask` object."""
        return {
            "id": self.id,
            "question": self.question,
            "answered": self.answered,
            "mode": self.mode,
            "passages": [passage_json(p) for p in self.passages],
            "notices": list(self.notices),
            "index_version": self.index_version,
            "model": self.model,
            "searched": list(self.searched),
        }


def passage_json(passage: Passage) -> dict[str, Any]:
    cite = asdict(passage.citation)
    body = {key: value for key, value in asdict(passage).items() if key != "citation"}
    return body | cite | {"reference": passage.reference()}


def build_answer(
    question: str,
    retrieval: Retrieval,
    documents: dict[str, DocumentInfo],
    index_version: str,
    model: str | None,
    searched: tuple[str, ...],
) -> Answer:
    """Wrap retrieval hits with their citations."""
    passages = []
    for hit in retrieval.hits:
        chunk, info = hit.chunk, documents[hit.chunk.doc_id]
        citation = Citation(
            source=info.path, document_id=info.id, title=info.title, date=info.date, start=chunk.start,
            end=chunk.end, page=chunk.page, page_end=chunk.page_end, paragraph=chunk.paragraph,
            paragraph_end=chunk.paragraph_end, line_start=chunk.line_start, line_end=chunk.line_end,
            document_sha256=info.sha256, passage_sha256=passage_sha256(chunk.text),
            index_version=index_version, model=model, date_source=info.date_source,
        )  # fmt: skip
        passages.append(
            Passage(
                hit.rank,
                chunk.text,
                round(hit.score, 6),
                round(hit.relevance, 4),
                _round(hit.lexical_score),
                _round(hit.dense_score),
                _round(hit.rerank_score),
                citation,
            )
        )
    return Answer(question, retrieval.answered, retrieval.mode, tuple(passages), retrieval.notices, index_version,
                  model, searched)  # fmt: skip


def _round(value: float | None) -> float | None:
    return None if value is None else round(value, 6)


def format_text(answer: Answer) -> str:
    """Numbered passages with citations, for a terminal."""
    lines = [f"Q: {answer.question}"]
    lines += [f"note: {notice}" for notice in answer.notices]
    if not answer.answered:
        lines.append(ABSTAIN_TEXT + (" Nearest passages:" if answer.passages else ""))
    for passage in answer.passages:
        cite = passage.citation
        lines.append("")
        lines.append(f"[{passage.rank}] {passage.text}")
        lines.append(
            f"    -- {cite.title} ({cite.date or 'undated'}), {cite.location()}, lines {cite.line_start}-"
            f"{cite.line_end}, chars {cite.start}-{cite.end} of {cite.source} · relevance {passage.relevance:.2f}"
        )
    return "\n".join(lines)


CSV_FIELDS = [
    "question", "answered", "mode", "index_version", "rank", "source", "title", "date", "location", "start", "end",
    "score", "relevance", "document_sha256", "passage_sha256", "reference", "text",
]  # fmt: skip
AUDIT_FIELDS = ["record", "record_id", "time", "user", "channel", "kind", "helpful", *CSV_FIELDS]


def csv_writer(stream: IO[str], audit: bool = False) -> csv.DictWriter:
    """A CSV writer for answers (one row per cited passage), its header already written."""
    writer = csv.DictWriter(stream, fieldnames=AUDIT_FIELDS if audit else CSV_FIELDS, extrasaction="ignore")
    writer.writeheader()
    return writer


def csv_rows(answer: dict[str, Any], record: dict[str, Any] | None = None) -> list[dict[str, Any]]:
    """Rows for one answer object (or one audit record: answer or feedback)."""
    base = {key: answer.get(key) for key in ("question", "answered", "mode", "index_version")}
    if record is not None:
        base |= {"record": record["seq"], "record_id": record["id"], "time": record["time"], "user": record["user"],
                 "channel": record["channel"], "kind": record["kind"], "question": record["question"],
                 "helpful": answer.get("helpful")}  # fmt: skip
    rows = []
    for passage in answer.get("passages", []):
        cite = Citation(**{name: passage.get(name) for name in Citation.__dataclass_fields__})
        rows.append(
            base | {key: passage.get(key) for key in CSV_FIELDS if key in passage} | {"location": cite.location()}
        )
    return rows or [base]
