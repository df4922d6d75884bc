"""Stage 6: hits -> `Answer`: quoted passages with citations, and their JSON and text forms.

Nothing here generates text about the documents: a passage is the document's own text between
two offsets, and everything else is fixed framing. Passages with the same normalised text (one
report in several formats) are shown once, with every place they appear (`Passage.also`); the
"lead" of a reply is the best-matching sentence of its top passages, quoted exactly.
"""

from __future__ import annotations

import csv
from dataclasses import dataclass, fields
from typing import IO, Any

from threatqa.chunking import Span, paragraphs, sentences
from threatqa.ingest_display import display_text, text_key
from threatqa.lexical import word_tokens
from threatqa.policy import OPEN, Labels
from threatqa.retrieval import Hit, Retrieval
from threatqa.store import DocumentInfo, passage_sha256

ABSTAIN_TEXT = "No passage in the documents answers this closely enough."
NEAREST_TEXT = "Nearest passages, which may not answer it:"
LEAD_PASSAGES = 2  # passages whose best sentence opens a reply


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
    # need-to-know (policy.py): the groups that may read the document, sorted (("open",): anyone), and the
    # version of the policy that said so; both None when no policy was in force (and in answers logged before)
    label: tuple[str, ...] | None = None
    policy_version: str | None = None

    @property
    def handling(self) -> str | None:
        """The label as an analyst reads it: 'finance, audit', 'open', 'no one'; None without a policy."""
        if self.label is None:
            return None
        return ", ".join(self.label) or "no one"

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
    also: tuple[Citation, ...] = ()  # the same text (normalised) elsewhere: other formats or copies

    def reference(self) -> str:
        """One-line reference: <title>, <date>, para N / p. N: "quote"."""
        cite = self.citation
        quote = " ".join(self.text.split())
        return f'{cite.title}, {cite.date or "undated"}, {cite.location()}: "{quote}"'

    @property
    def shown(self) -> str:
        """The passage as a reader sees it (Markdown without its markup; other formats as they are)."""
        return display_text(self.text, self.citation.source)

    @property
    def sources(self) -> tuple[Citation, ...]:
        """Every place this text appears, the cited one first."""
        return (self.citation, *self.also)


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
    policy_version: str | None = None  # the need-to-know policy it was answered under (None: no policy)

    def document_ids(self) -> set[str]:
        """Every document this answer cites, copies included."""
        return {cite.document_id for passage in self.passages for cite in passage.sources}

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
            "policy_version": self.policy_version,
        }


def passage_json(passage: Passage) -> dict[str, Any]:
    body = {key: value for key, value in _fields(passage).items() if key not in ("citation", "also")}
    also = [_citation_json(c) for c in passage.also]
    return body | _citation_json(passage.citation) | {"reference": passage.reference(), "also_in": also}


def _citation_json(cite: Citation) -> dict[str, Any]:
    values = _fields(cite)
    if cite.label is not None:
        values["label"] = list(cite.label)  # the JSON form, so that a payload equals itself read back
    return values


def _fields(item: object) -> dict[str, Any]:
    """A dataclass's fields, one level deep (its fields here are plain values). `asdict` deep-copies every
    value: in 200 profiled Engine.ask calls at 10k passages it took 0.77 s of the 2.4 s spent outside the search."""
    return {f.name: getattr(item, f.name) for f in fields(item)}  # type: ignore[arg-type]


def answer_from_json(data: dict[str, Any]) -> Answer:
    """An `Answer` back from its JSON object (an audit record's payload); unknown keys are ignored."""
    return Answer(
        question=str(data.get("question", "")), answered=bool(data.get("answered")), mode=str(data.get("mode", "")),
        passages=tuple(_passage_from_json(p) for p in data.get("passages") or []),
        notices=tuple(data.get("notices") or ()), index_version=str(data.get("index_version", "")),
        model=data.get("model"), searched=tuple(data.get("searched") or ()), id=data.get("id"),
        policy_version=data.get("policy_version"),
    )  # fmt: skip


def _citation_from_json(data: dict[str, Any], defaults: dict[str, Any] | None = None) -> Citation:
    """A citation back from JSON; one logged before labels existed has none (label and policy version None)."""
    values = (defaults or {}) | data
    label = values.get("label")
    values["label"] = None if label is None else tuple(str(group) for group in label)
    return Citation(**{name: values.get(name) for name in Citation.__dataclass_fields__})


def _passage_from_json(data: dict[str, Any]) -> Passage:
    cite = _citation_from_json(data)
    shared = {"index_version": cite.index_version, "policy_version": cite.policy_version}
    also = tuple(_citation_from_json(c, shared) for c in data.get("also_in") or [])
    return Passage(
        int(data.get("rank", 0)), str(data.get("text", "")), float(data.get("score") or 0.0),
        float(data.get("relevance") or 0.0), data.get("lexical_score"), data.get("dense_score"),
        data.get("rerank_score"), cite, also,
    )  # fmt: skip


def build_answer(
    question: str,
    retrieval: Retrieval,
    documents: dict[str, DocumentInfo],
    index_version: str,
    model: str | None,
    searched: tuple[str, ...],
    limit: int | None = None,
    labels: Labels | None = None,
) -> Answer:
    """Wrap retrieval hits with their citations; hits with the same normalised text become one
    passage listing every source; at most `limit` passages (all by default), ranked from 1. Under
    a policy (`labels`, the ones retrieval was filtered by), each citation carries its document's label."""
    labels = labels or Labels(None)
    passages = []
    for rank, group in enumerate(collapse(retrieval.hits, documents)[:limit], start=1):
        hit = group[0]  # the best-ranked copy gives the scores; the cited copy is one whose exact text reads as shown
        group = sorted(group, key=lambda h: _marked_up(h, documents))
        cites = [_citation(h, documents[h.chunk.doc_id], index_version, model, labels) for h in group]
        passages.append(
            Passage(
                rank,
                group[0].chunk.text,
                round(hit.score, 6),
                round(hit.relevance, 4),
                _round(hit.lexical_score),
                _round(hit.dense_score),
                _round(hit.rerank_score),
                cites[0],
                tuple(cites[1:]),
            )
        )
    version = labels.policy.version if labels.policy else None
    return Answer(question, retrieval.answered, retrieval.mode, tuple(passages), retrieval.notices, index_version,
                  model, searched, policy_version=version)  # fmt: skip


def collapse(hits: tuple[Hit, ...] | list[Hit], documents: dict[str, DocumentInfo]) -> list[list[Hit]]:
    """Hits grouped by the normalised text they show (`ingest_display.text_key`), best first."""
    groups: dict[str, list[Hit]] = {}
    for hit in hits:
        groups.setdefault(text_key(hit.chunk.text, documents[hit.chunk.doc_id].path), []).append(hit)
    return list(groups.values())


def _marked_up(hit: Hit, documents: dict[str, DocumentInfo]) -> bool:
    """Whether the exact text of this copy differs from how it reads (Markdown source, for instance)."""
    return display_text(hit.chunk.text, documents[hit.chunk.doc_id].path) != hit.chunk.text


def _citation(hit: Hit, info: DocumentInfo, index_version: str, model: str | None, labels: Labels) -> Citation:
    chunk = hit.chunk
    return Citation(
        source=info.path, document_id=info.id, title=info.title, date=info.date, start=chunk.start,
        end=chunk.end, page=chunk.page, page_end=chunk.page_end, paragraph=chunk.paragraph,
        paragraph_end=chunk.paragraph_end, line_start=chunk.line_start, line_end=chunk.line_end,
        document_sha256=info.sha256, passage_sha256=passage_sha256(chunk.text),
        index_version=index_version, model=model, date_source=info.date_source, label=_label(labels, info.id),
        policy_version=labels.policy.version if labels.policy else None,
    )  # fmt: skip


def _label(labels: Labels, document_id: str) -> tuple[str, ...] | None:
    """The groups that may read a document, sorted; ("open",) for anyone; () for no one; None without a policy."""
    if labels.policy is None:
        return None
    label = labels.by_document.get(document_id)
    if label is None:  # not labelled under this policy: nobody may read it (it cannot have been searched)
        return ()
    return (OPEN,) if label.open else tuple(sorted(label.groups))


def best_sentence(question: str, text: str) -> Span | None:
    """The sentence of `text` sharing the most word stems with the question (the first on ties)."""
    terms = set(word_tokens(question))
    best, best_overlap = None, 0
    for paragraph in paragraphs(text):
        for sentence in sentences(text, paragraph):
            overlap = len(terms.intersection(word_tokens(text[sentence.start : sentence.end])))
            if overlap > best_overlap:
                best, best_overlap = sentence, overlap
    return best


@dataclass(frozen=True)
class Lead:
    """One sentence that opens a reply: quoted exactly from passage `rank` as shown."""

    rank: int
    text: str


def lead(answer: Answer, count: int = LEAD_PASSAGES) -> list[Lead]:
    """The best-matching sentence of each of the top `count` passages (none for an abstention)."""
    if not answer.answered:
        return []
    leads = []
    for passage in answer.passages[:count]:
        shown = passage.shown
        span = best_sentence(answer.question, shown)
        if span is not None:
            leads.append(Lead(passage.rank, " ".join(shown[span.start : span.end].split())))
    return leads


def match_words(passage: Passage, top_score: float) -> str:
    """Relevance an analyst can read: how this passage's ranking score compares with the best one's."""
    if passage.rank == 1:
        return "best match"
    share = passage.score / top_score if top_score > 0 else 0.0
    if share >= 0.85:
        return "strong match"
    if share >= 0.6:
        return "good match"
    return "partial match"


def plain_text(answer: Answer, link: str | None = None) -> str:
    """The answer as clean text to paste anywhere: the lead, then each passage with one reference line."""
    lines = [f"Q: {answer.question}", ""]
    if answer.answered:
        lines += [f'"{item.text}" [{item.rank}]' for item in lead(answer)]
    else:
        lines += [ABSTAIN_TEXT, NEAREST_TEXT if answer.passages else ""]
    for passage in answer.passages:
        lines += ["", f"[{passage.rank}] " + " ".join(passage.shown.split())]
        lines += [f"    {reference_line(cite)}" for cite in passage.sources]
    if link:
        lines += ["", f"Permalink: {link}"]
    return "\n".join(lines).strip() + "\n"


def reference_line(cite: Citation) -> str:
    """'Title, 2023-07-17, p. 3 (report.pdf)', then '; handling: finance, audit' under a policy."""
    handling = f"; handling: {cite.handling}" if cite.handling else ""
    return f"{cite.title}, {cite.date or 'undated'}, {cite.location()} ({cite.source}){handling}"


def format_markdown(answer: Answer, link: str | None = None) -> str:
    """The answer as a Markdown document (export): quotes as blockquotes, one reference line per source."""
    lines = [f"# {answer.question}", ""]
    if answer.answered:
        lines += [f"> {item.text} [{item.rank}]" for item in lead(answer)] + [""]
    else:
        lines += [f"**{ABSTAIN_TEXT}**", "", NEAREST_TEXT if answer.passages else "", ""]
    for passage in answer.passages:
        lines += [f"## [{passage.rank}]", ""]
        lines += [f"> {line}" if line.strip() else ">" for line in passage.shown.split("\n")] + [""]
        lines += [f"- {reference_line(cite)}, characters {cite.start}-{cite.end}" for cite in passage.sources]
        lines.append("")
    lines.append(f"Documents searched: {', '.join(answer.searched) or 'none'}")
    if link:
        lines += ["", f"Permalink: {link}"]
    return "\n".join(lines) + "\n"


def _round(value: float | None) -> float | None:
    return None if value is None else round(value, 6)


def format_text(answer: Answer) -> str:
    """Numbered passages with citations, for a terminal."""
    lines = [f"Q: {answer.question}"]
    lines += [f"note: {notice}" for notice in answer.notices]
    if not answer.answered:
        lines.append(ABSTAIN_TEXT + (f" {NEAREST_TEXT}" if answer.passages else ""))
    for passage in answer.passages:
        cite = passage.citation
        lines.append("")
        lines.append(f"[{passage.rank}] {passage.text}")
        lines.append(
            f"    -- {cite.title} ({cite.date or 'undated'}), {cite.location()}, lines {cite.line_start}-"
            f"{cite.line_end}, chars {cite.start}-{cite.end} of {cite.source} · relevance {passage.relevance:.2f}"
            + (f" · handling: {cite.handling}" if cite.handling else "")
        )
        lines += [f"    -- also in {reference_line(also)}" for also in passage.also]
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
