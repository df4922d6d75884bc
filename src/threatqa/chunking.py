"""Stage 2: Document -> passages (`Chunk`) with exact character offsets into the document text.

Passages follow the document's own structure: consecutive paragraphs are packed into passages
of about the target size, each paragraph in exactly one passage (so the text is indexed and
embedded once), a very long paragraph is split at sentence boundaries, and a sentence longer
than a passage (unpunctuated or lower-case text) at spaces. No passage crosses from one document
into another. The invariant every later stage relies on: `chunk.text == document.text[chunk.start:chunk.end]`.

For dense search each passage is embedded as `windows`: runs of whole sentences of about
`window` characters, each within the model's token limit, so nothing is truncated by the model;
a passage scores by its best window (MaxP, Dai and Callan, SIGIR 2019).
"""

from __future__ import annotations

import bisect
import re
from collections.abc import Callable, Iterable
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
    """Passage sizes in characters (see `_pack`), sentences of overlap for split paragraphs, and
    the size in characters of the windows embedded for dense search (see `windows`)."""

    size: int = 300
    overlap: int = 0
    max_size: int = 2000
    window: int = 200


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


def sentences(text: str, span: Span, max_len: int | None = None) -> list[Span]:
    """Sentence spans inside one paragraph span (trimmed, never empty); with `max_len`, a longer
    sentence is cut at spaces (or anywhere, when it has none) into pieces of at most that length."""
    result = []
    cursor = span.start
    for match in _SENTENCE_END.finditer(text, span.start, span.end):
        if _ends_with_abbreviation(text, cursor, match.start()):
            continue
        result.extend(_trimmed(text, cursor, match.start() + _closing_len(text, match)))
        cursor = match.end()
    result.extend(_trimmed(text, cursor, span.end))
    if max_len is None:
        return result
    return [piece for sentence in result for piece in _bounded(text, sentence, max_len)]


def _bounded(text: str, span: Span, max_len: int) -> list[Span]:
    """`span` cut at the last space before every `max_len` characters (hard cuts without spaces)."""
    pieces = []
    start = span.start
    while span.end - start > max_len:
        cut = text.rfind(" ", start + 1, start + max_len + 1)
        cut = cut if cut > start else start + max_len
        pieces.extend(_trimmed(text, start, cut))
        start = cut
    return pieces + _trimmed(text, start, span.end)


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

    Consecutive paragraphs are packed while the next one brings the passage nearer `size`
    characters (so passages stay near the target on both sides), never past `max_size`; each
    paragraph lies in one passage, so no text is embedded twice. A heading stays with the text it
    heads: it never ends a passage that has more than the heading. A short run
    at the end joins the passage before it when that stays within `max_size`. A paragraph longer
    than `max_size` is split into sentence windows sharing `overlap` sentences.
    """
    passages: list[tuple[int, int, Span]] = []
    first = 0
    while first < len(paras):
        para = paras[first]
        if para.end - para.start > max_size:
            windows = _windows(sentences(text, para, max_size), max_size, overlap)
            passages.extend((first + 1, first + 1, w) for w in windows)
            first += 1
            continue
        last = first
        while last + 1 < len(paras) and _closer(paras[last].end - para.start, paras[last + 1].end - para.start, size):
            last += 1
            if paras[last].end - para.start > max_size:
                last -= 1
                break
        while last > first and last + 1 < len(paras) and _heading(text[paras[last].start : paras[last].end]):
            last -= 1  # a heading (or a lead-in ending in a colon) opens the next passage, never ends one
        tail_fits = passages and paras[last].end - passages[-1][2].start <= max_size
        if paras[last].end - para.start < size and last == len(paras) - 1 and tail_fits:
            before, _, span = passages.pop()  # a short run at the end joins the passage before it
            passages.append((before, last + 1, Span(span.start, paras[last].end)))
        else:
            passages.append((first + 1, last + 1, Span(para.start, paras[last].end)))
        first = last + 1
    return passages


_HEADING_CHARS = 100  # a paragraph this short that does not end a sentence reads as a heading


def _heading(paragraph: str) -> bool:
    """A heading or lead-in ("Major threats", "## Drugs", "Major Threats to Britain:"): a short
    paragraph of one line that does not end like a sentence."""
    line = paragraph.strip()
    return 0 < len(line) <= _HEADING_CHARS and "\n" not in line and line[-1] not in ".!?…\"'”’)]"


def _closer(length: int, longer: int, size: int) -> bool:
    """Whether taking in the next paragraph (giving `longer`) brings a passage of `length` nearer `size`."""
    return length < size and longer - size < size - length


def _windows(sents: list[Span], size: int, overlap: int) -> Iterable[Span]:
    """Consecutive sentence windows of at most `size` chars (or one longer sentence), sharing `overlap` sentences."""
    first = 0
    while first < len(sents):
        last = first
        while last + 1 < len(sents) and sents[last + 1].end - sents[first].start <= size:
            last += 1
        yield Span(sents[first].start, sents[last].end)
        if last + 1 >= len(sents):
            return
        first = max(first + 1, last + 1 - overlap)


def windows(
    text: str, passages: list[Span], size: int, fits: Callable[[list[str]], list[bool]] | None = None
) -> list[list[Span]]:
    """The spans embedded for each passage: whole sentences up to about `size` characters each,
    together covering the passage once; a span that does not `fit` the model (its token limit) is
    halved at a space until it does, so the model never truncates."""
    result = [list(_windows(sentences(text, p), size, 0)) for p in passages]
    if fits is None:
        return result
    pending = [(i, span) for i, spans in enumerate(result) for span in spans]
    fitted: list[tuple[int, Span]] = []
    while pending:  # each round asks about every span still in question in one batch
        answers = fits([text[span.start : span.end] for _, span in pending])
        over: list[tuple[int, Span]] = []
        for (i, span), fit in zip(pending, answers):
            if fit or span.end - span.start <= 1:
                fitted.append((i, span))
            else:
                over.extend((i, part) for part in _halve(text, span))
        pending = over
    result = [[] for _ in passages]
    for i, span in sorted(fitted, key=lambda item: (item[0], item[1].start)):
        result[i].append(span)
    return result


def _halve(text: str, span: Span) -> list[Span]:
    """Two spans split at the space nearest the middle (or at the middle when there is none)."""
    middle = (span.start + span.end) // 2
    left, right = text.rfind(" ", span.start + 1, middle + 1), text.find(" ", middle, span.end - 1)
    cut = min((c for c in (left, right) if c > span.start), key=lambda c: abs(c - middle), default=middle)
    return _trimmed(text, span.start, cut) + _trimmed(text, cut, span.end)


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
