"""Stage 2: Document -> passages (`Chunk`) with exact character offsets into the document text.

Passages follow the document's own structure: each starts at a paragraph and takes in the
following paragraphs up to the target size, a very long paragraph is split at sentence
boundaries with a few sentences of overlap, and no passage crosses from one document into another.
The invariant every later stage relies on: `chunk.text == document.text[chunk.start:chunk.end]`.
"""

from __future__ import annotations

import bisect
import re
from collections.abc import Iterable
from dataclasses import dataclass

from threatqa.ingest import Document

_PARAGRAPH_BREAK = re.compile(r"\n[ \t]*\n\s*")
# A sentence ends at . ! ? or … (plus closing quotes/brackets) before a space and a capital,
# digit, opening quote or bullet; or at a line break before a bullet or list marker.
_SENTENCE_END = re.compile(r"(?<=[.!?…])[\"'”’)\]]*\s+(?=[\"'“‘(\[]?[A-Z0-9•\-*])|\n+(?=\s*(?:[•\-*]|\d+[.)])\s)")
_ABBREVIATIONS = frozenset(
    [
        "mr",
        "mrs",
        "ms",
        "dr",
        "prof",
        "st",
        "no",
        "vs",
        "etc",
        "e.g",
        "i.e",
        "u.s",
        "u.k",
        "jr",
        "sr",
        "inc",
        "ltd",
        "co",
        "gen",
        "col",
        "sgt",
        "rev",
        "fig",
        "approx",
    ]
)


@dataclass(frozen=True)
class Span:
    start: int
    end: int


@dataclass(frozen=True)
class ChunkConfig:
    """Passage sizes in characters (see `_pack`) and sentences of overlap for split paragraphs."""

    size: int = 300
    overlap: int = 1
    max_size: int = 2000


@dataclass(frozen=True)
class Chunk:
    """A passage: exact text of document `doc_id` between `start` and `end`."""

    id: str
    doc_id: str
    ordinal: int
    text: str
    start: int
    end: int
    paragraph: int  # 1-based number of the first paragraph it covers (counted from the body)
    paragraph_end: int
    line_start: int  # 1-based line numbers in the document text
    line_end: int
    page: int | None = None
    page_end: int | None = None


def paragraphs(text: str, start: int = 0) -> list[Span]:
    """Non-blank paragraph spans (whitespace-trimmed) of text[start:], separated by blank lines."""
    spans = []
    cursor = start
    for match in _PARAGRAPH_BREAK.finditer(text, start):
        spans.extend(_trimmed(text, cursor, match.start()))
        cursor = match.end()
    spans.extend(_trimmed(text, cursor, len(text)))
    return spans


def sentences(text: str, span: Span) -> list[Span]:
    """Sentence spans inside one paragraph span (trimmed, never empty)."""
    result = []
    cursor = span.start
    for match in _SENTENCE_END.finditer(text, span.start, span.end):
        if _ends_with_abbreviation(text, cursor, match.start()):
            continue
        result.extend(_trimmed(text, cursor, match.start() + _closing_len(text, match)))
        cursor = match.end()
    result.extend(_trimmed(text, cursor, span.end))
    return result


def chunk_document(document: Document, config: ChunkConfig = ChunkConfig()) -> list[Chunk]:
    """Split one document into passages of at least about `size` and at most `max_size` characters."""
    newlines = [m.start() for m in re.finditer("\n", document.text)]
    paras = paragraphs(document.text, document.body_start)
    groups = _pack(document.text, paras, config.size, config.overlap, config.max_size)
    return [
        _make_chunk(document, ordinal, first_para, last_para, span, newlines)
        for ordinal, (first_para, last_para, span) in enumerate(groups)
    ]


def chunk_documents(documents: Iterable[Document], config: ChunkConfig = ChunkConfig()) -> list[Chunk]:
    return [chunk for document in documents for chunk in chunk_document(document, config)]


def _pack(text: str, paras: list[Span], size: int, overlap: int, max_size: int) -> list[tuple[int, int, Span]]:
    """(first paragraph number, last paragraph number, span) for each passage.

    A passage starts at every paragraph and takes in the following ones until it reaches `size`
    characters, so a short paragraph ("He said so.") is never cut off from the paragraph that
    gives it meaning. Passages therefore overlap; retrieval keeps the best of overlapping hits.
    A run that would pass `max_size` stops before; a paragraph longer than `max_size` is split
    into sentence windows sharing `overlap` sentences.
    """
    passages: list[tuple[int, int, Span]] = []
    for first, para in enumerate(paras):
        if para.end - para.start > max_size:
            passages.extend((first + 1, first + 1, w) for w in _windows(sentences(text, para), max_size, overlap))
            continue
        last = first
        while (
            paras[last].end - para.start < size
            and last + 1 < len(paras)
            and paras[last + 1].end - para.start <= max_size
        ):
            last += 1
        short_tail = paras[last].end - para.start < size and last == len(paras) - 1
        if short_tail and first > 0 and passages and passages[-1][2].end >= para.end:
            continue  # a short run at the end is already inside the previous passage
        passages.append((first + 1, last + 1, Span(para.start, paras[last].end)))
    return passages


def _windows(sents: list[Span], size: int, overlap: int) -> Iterable[Span]:
    """Consecutive sentence windows of at most `size` chars, sharing `overlap` sentences."""
    first = 0
    while first < len(sents):
        last = first
        while last + 1 < len(sents) and sents[last + 1].end - sents[first].start <= size:
            last += 1
        yield Span(sents[first].start, sents[last].end)
        if last + 1 >= len(sents):
            return
        first = max(first + 1, last + 1 - overlap)


def _make_chunk(
    document: Document, ordinal: int, first_para: int, last_para: int, span: Span, newlines: list[int]
) -> Chunk:
    page = document.page_at(span.start)
    return Chunk(
        id=f"{document.id}:{ordinal}",
        doc_id=document.id,
        ordinal=ordinal,
        text=document.text[span.start : span.end],
        start=span.start,
        end=span.end,
        paragraph=first_para,
        paragraph_end=last_para,
        line_start=bisect.bisect_left(newlines, span.start) + 1,
        line_end=bisect.bisect_left(newlines, span.end - 1) + 1,
        page=page,
        page_end=document.page_at(span.end - 1) if page is not None else None,
    )


def _trimmed(text: str, start: int, end: int) -> list[Span]:
    while start < end and text[start].isspace():
        start += 1
    while end > start and text[end - 1].isspace():
        end -= 1
    return [Span(start, end)] if end > start else []


def _closing_len(text: str, match: re.Match[str]) -> int:
    """Length of the punctuation/quotes that belong to the sentence before the whitespace."""
    return len(match.group(0)) - len(match.group(0).lstrip("\"'”’)]"))


def _ends_with_abbreviation(text: str, start: int, end: int) -> bool:
    """True when the candidate boundary follows an abbreviation such as 'Mr.' or 'e.g.'."""
    tail = text[max(start, end - 6) : end].rsplit(None, 1)[-1] if end > start else ""
    word = tail.rstrip(".").lower()
    return tail.endswith(".") and (word in _ABBREVIATIONS or (len(word) == 1 and word.isalpha()))
