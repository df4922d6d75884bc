"""PDF text layer -> paragraphs and headings (part of the ingest stage).

Layout analysis is pdfminer.six's (MIT): it groups characters into lines and lines into text
boxes in reading order (columns included). On top of its boxes this module drops page furniture
(running headers and footers: the same text, digits aside, in the top or bottom band of most
pages; page numbers), splits a box where the font size changes (a heading run into its text),
joins each paragraph's lines (a line-end hyphen before a lower-case word is a typesetting break
and is removed, unless the hyphenated word occurs elsewhere in the document), and joins a
paragraph that runs on to the next page. pdfminer.six was chosen over pypdf, pypdfium2 and
pdfplumber with `benchmarks/extraction.py`: pypdfium2 is the fastest but, like pypdf, gives lines
without paragraphs; pdfminer.six's boxes give the paragraphs (figures in CHANGELOG.md).
"""

from __future__ import annotations

import io
import re
import statistics
from collections import Counter
from dataclasses import dataclass, field
from datetime import datetime

from threatqa.errors import IngestError

MARGIN_BAND = 0.12  # share of the page height at top and bottom where running headers and footers live
_PAGE_NUMBER = re.compile(r"^(?:page\s*)?[-–—]?\s*[ivxlc\d]+\s*[-–—]?(?:\s*(?:of|/)\s*\d+)?$", re.IGNORECASE)
_SENTENCE_END = re.compile(r"[.!?:;…\"”’)\]]$")
OCR_HINT = (
    "add a text layer with OCR first, e.g. `ocrmypdf --skip-text in.pdf out.pdf` (ocrmypdf and tesseract are "
    "separate installs; threatqa has no built-in OCR) and put the result in the docs folder"
)


@dataclass
class Block:
    """A paragraph or heading being assembled: its lines and the page each line is on."""

    lines: list[tuple[int, str]]  # (page, text) in reading order
    size: float  # font size of its characters (median)
    top: float  # share of the page height from the top of the page to the block's top
    bottom: float
    heading: bool = False
    pieces: list[tuple[int, str]] = field(default_factory=list)  # (page, joined text) once assembled


@dataclass(frozen=True)
class PdfText:
    """What the PDF reader hands back to the format layer."""

    paragraphs: list[list[tuple[int, str]]]  # each paragraph: (page, text) pieces, pieces joined by a space
    title: str | None  # the largest heading on page 1
    meta_title: str | None
    meta_created: datetime | None
    warnings: tuple[str, ...]


def read_pdf(data: bytes) -> PdfText:
    """Paragraphs of a PDF's text layer, page furniture left out; IngestError without text."""
    from pdfminer.layout import LAParams
    from pdfminer.pdfdocument import PDFDocument, PDFPasswordIncorrect
    from pdfminer.pdfparser import PDFParser

    try:
        document = PDFDocument(PDFParser(io.BytesIO(data)))
    except PDFPasswordIncorrect:
        raise IngestError("the PDF is encrypted with a password; save an unprotected copy") from None
    pages, image_pages = _page_blocks(document, LAParams())
    if not any(pages):
        if image_pages:
            raise IngestError(f"a scanned PDF: no text layer on any of its {len(pages)} pages; {OCR_HINT}")
        raise IngestError("no text in the PDF")
    warnings = ()
    missing = [n for n, blocks in enumerate(pages, 1) if not blocks and n in image_pages]
    if missing:
        shown = ", ".join(map(str, missing[:10])) + (" ..." if len(missing) > 10 else "")
        warnings = (f"pages {shown} have no text layer (scanned?) and are not indexed; {OCR_HINT}",)
    pages = _drop_furniture(pages)
    blocks = _join_pages(pages)
    words = Counter(w.lower() for b in blocks for _, line in b.lines for w in re.findall(r"[\w-]+", line))
    paragraphs = [_assemble(block, words) for block in blocks]
    info = _info(document)
    return PdfText(
        paragraphs=[p for p in paragraphs if p],
        title=_title(pages),
        meta_title=info.get("Title"),
        meta_created=_created(info.get("CreationDate")),
        warnings=warnings,
    )


def _page_blocks(document: object, laparams: object) -> tuple[list[list[Block]], set[int]]:
    """Text blocks of every page (empty list for a page without text) and the pages with images."""
    from pdfminer.converter import PDFPageAggregator
    from pdfminer.layout import LTFigure, LTImage, LTTextBoxHorizontal
    from pdfminer.pdfinterp import PDFPageInterpreter, PDFResourceManager
    from pdfminer.pdfpage import PDFPage

    manager = PDFResourceManager()
    device = PDFPageAggregator(manager, laparams=laparams)
    interpreter = PDFPageInterpreter(manager, device)
    pages: list[list[Block]] = []
    image_pages: set[int] = set()
    for number, page in enumerate(PDFPage.create_pages(document), 1):
        interpreter.process_page(page)
        layout = device.get_result()
        height = max(layout.height, 1.0)
        blocks = []
        for item in layout:
            if isinstance(item, LTTextBoxHorizontal):
                blocks.extend(_box_blocks(item, number, layout.y1, height))
            elif isinstance(item, (LTFigure, LTImage)):
                image_pages.add(number)
        pages.append(blocks)
    return pages, image_pages


def _box_blocks(box: object, page: int, page_top: float, height: float) -> list[Block]:
    """One pdfminer text box as blocks: split where the font size changes by more than 15%."""
    from pdfminer.layout import LTChar

    blocks: list[Block] = []
    for line in box:  # type: ignore[attr-defined]
        text = line.get_text().strip()
        if not text:
            continue
        sizes = [c.size for c in line if isinstance(c, LTChar)]
        size = statistics.median(sizes) if sizes else 0.0
        top, bottom = (page_top - line.y1) / height, (page_top - line.y0) / height
        if blocks and abs(size - blocks[-1].size) <= 0.15 * max(size, blocks[-1].size):
            blocks[-1].lines.append((page, text))
            blocks[-1].bottom = bottom
        else:
            blocks.append(Block([(page, text)], size, top, bottom))
    return blocks


def _furniture_key(block: Block) -> str:
    return re.sub(r"\d+", "#", " ".join(t for _, t in block.lines).lower())


def _drop_furniture(pages: list[list[Block]]) -> list[list[Block]]:
    """Without page numbers and running headers and footers: text in the top or bottom band of a
    page that repeats (digits aside) on at least half the pages, two at least."""
    in_band = [[b for b in blocks if b.bottom <= MARGIN_BAND or b.top >= 1 - MARGIN_BAND] for blocks in pages]
    counts = Counter(key for band in in_band for key in {_furniture_key(b) for b in band})
    needed = max(2, (len(pages) + 1) // 2)
    repeated = {key for key, n in counts.items() if n >= needed}
    kept = []
    for blocks, band in zip(pages, in_band):
        furniture = {id(b) for b in band if _furniture_key(b) in repeated or _PAGE_NUMBER.match(_text(b))}
        kept.append([b for b in blocks if id(b) not in furniture])
    return kept


def _text(block: Block) -> str:
    return " ".join(t for _, t in block.lines).strip()


def _body_size(pages: list[list[Block]]) -> float:
    sizes: Counter[float] = Counter()
    for blocks in pages:
        for b in blocks:
            sizes[round(b.size, 1)] += sum(len(t) for _, t in b.lines)
    return sizes.most_common(1)[0][0] if sizes else 0.0


def _join_pages(pages: list[list[Block]]) -> list[Block]:
    """All blocks in reading order, headings marked, a paragraph that runs on over a page break
    (no closing punctuation, the next page starting lower-case) joined with its continuation."""
    body = _body_size(pages)
    result: list[Block] = []
    for blocks in pages:
        for index, block in enumerate(blocks):
            block.heading = block.size > body * 1.12 and len(_text(block)) < 200
            if index == 0 and result and _runs_on(result[-1], block):
                result[-1].lines.extend(block.lines)
            else:
                result.append(block)
    return result


def _runs_on(before: Block, after: Block) -> bool:
    last, first = before.lines[-1][1], after.lines[0][1]
    same_style = not before.heading and not after.heading and abs(before.size - after.size) < 0.5
    return same_style and not _SENTENCE_END.search(last) and (first[:1].islower() or last.endswith("-"))


def _assemble(block: Block, words: Counter[str]) -> list[tuple[int, str]]:
    """The block's lines joined into one paragraph, as (page, text) pieces, one per page; a
    piece after the first starts with the separator that joins it (a space, or none after a
    removed hyphen), so the paragraph is the pieces concatenated."""
    pieces: list[tuple[int, str]] = []
    for page, line in block.lines:
        line = " ".join(line.split())
        if not pieces:
            pieces.append((page, line))
            continue
        left, separator = _join(pieces[-1][1], line, words)
        if pieces[-1][0] == page:
            pieces[-1] = (page, left + separator + line)
        else:
            pieces[-1] = (pieces[-1][0], left)
            pieces.append((page, separator + line))
    return pieces


def _join(text: str, line: str, words: Counter[str]) -> tuple[str, str]:
    """How two consecutive lines of a paragraph join: (the first line, perhaps without its
    typesetting hyphen, and the separator before the second line)."""
    if text.endswith("\xad"):
        return text[:-1], ""
    hyphen = re.search(r"(\w+)-$", text)
    following = re.match(r"(\w+)", line)
    if hyphen and following and line[:1].islower():
        head, tail = hyphen.group(1), following.group(1)
        # a compound written with its hyphen elsewhere (and never without) keeps it: "crypto-/assets"
        if words[f"{head}-{tail}".lower()] and not words[(head + tail).lower()]:
            return text, ""
        return text[:-1], ""
    return text, " "


def _title(pages: list[list[Block]]) -> str | None:
    """The largest heading on the first page with text, when it is larger than the body text."""
    first_page = next((blocks for blocks in pages if blocks), [])
    headings = [b for b in first_page if b.heading]
    if not headings:
        return None
    biggest = max(headings, key=lambda b: b.size)
    return " ".join(_text(biggest).split())


def _info(document: object) -> dict[str, str]:
    from pdfminer.pdftypes import resolve1

    info: dict[str, str] = {}
    for entry in getattr(document, "info", []) or []:
        for key, value in entry.items():
            value = resolve1(value)
            if isinstance(value, bytes):
                value = _pdf_string(value)
            if isinstance(value, str):
                info[key] = value
    return info


def _pdf_string(raw: bytes) -> str:
    if raw.startswith((b"\xfe\xff", b"\xff\xfe")):
        return raw.decode("utf-16", "replace")
    return raw.decode("latin-1", "replace")


def _created(value: str | None) -> datetime | None:
    from threatqa.ingest_meta import pdf_date

    return pdf_date(value)
