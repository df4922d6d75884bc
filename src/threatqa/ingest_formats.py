"""Format readers: file bytes -> `Extracted` (text, pages, title and date evidence). Part of the
ingest stage; `ingest.py` turns an `Extracted` into a `Document`. Imports run one way:
ingest -> ingest_worker -> ingest_formats -> ingest_pdf, ingest_meta, ingest_display.

For .txt and .md the text is the file itself (newlines normalised), so offsets can be checked
in any editor. HTML (main content only, by trafilatura), PDF (paragraphs, by ingest_pdf) and
DOCX (body paragraphs and tables in order, without page headers and footers) become plain text,
one paragraph per block, blocks separated by blank lines.
"""

from __future__ import annotations

import codecs
import io
import re
import zipfile
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime

from threatqa.errors import IngestError
from threatqa.ingest_meta import Evidence

SUPPORTED = (".txt", ".md", ".markdown", ".html", ".htm", ".pdf", ".docx")
PARSED = (".html", ".htm", ".pdf", ".docx")  # read by third-party parsers: run under the time limit
MAX_UNPACKED_BYTES = 256 * 1024 * 1024  # a .docx that unpacks to more is refused (zip bomb)


@dataclass(frozen=True)
class PageSpan:
    """Where one PDF page lies in the extracted text (1-based page number)."""

    page: int
    start: int
    end: int


@dataclass(frozen=True)
class Extracted:
    """What a format reader returns: the text and the evidence for its title and date, in the
    order of evidence (ingest_meta) within each kind; the choice is made in ingest.py."""

    text: str
    pages: tuple[PageSpan, ...] = ()
    titles: tuple[Evidence, ...] = ()  # stated in the document: front matter / <meta>, first heading, <title>
    dates: tuple[Evidence, ...] = ()  # stated in the document's metadata: front matter, <meta>, <time>
    file_title: str | None = None  # file metadata, used only when plausible
    file_date: datetime | None = None
    header_start: int = 0  # where the opening paragraphs (title, dateline) are looked for: after front matter
    markdown: bool = False
    warnings: tuple[str, ...] = ()


def extract(suffix: str, data: bytes) -> Extracted:
    """Run the reader for `suffix`; a parser's own exception becomes an IngestError naming it."""
    reader = READERS.get(suffix)
    if reader is None:
        raise IngestError(f"unsupported file type {suffix or '(none)'!r}; supported: {', '.join(SUPPORTED)}")
    try:
        return reader(data)
    except IngestError:
        raise
    except RecursionError:
        raise IngestError(f"{suffix} file nested too deeply to parse") from None
    except Exception as exc:  # parsers raise many types on malformed files
        raise IngestError(f"cannot parse {suffix} file ({type(exc).__name__}: {str(exc)[:200]})") from None


def decode(data: bytes) -> str:
    """Text of a text file: UTF-8 (with or without BOM), or UTF-16/32 with a BOM; newlines normalised."""
    for bom, codec in (
        (codecs.BOM_UTF32_LE, "utf-32"), (codecs.BOM_UTF32_BE, "utf-32"),
        (codecs.BOM_UTF16_LE, "utf-16"), (codecs.BOM_UTF16_BE, "utf-16"),
    ):  # fmt: skip
        if data.startswith(bom):
            try:
                return _newlines(data.decode(codec))
            except UnicodeDecodeError as exc:
                raise IngestError(f"not valid {codec.upper()} after its byte-order mark (byte {exc.start})") from None
    if b"\x00" in data[:8192]:
        raise IngestError("binary content (NUL bytes) in a text file")
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise IngestError(f"not valid UTF-8 (byte {exc.start}); save it as UTF-8") from None
    return _newlines(text)


def _newlines(text: str) -> str:
    return text.replace("\r\n", "\n").replace("\r", "\n")


def _read_text(data: bytes) -> Extracted:
    text = decode(data)
    return Extracted(text, titles=_first_line_title(text))


def _first_line_title(text: str) -> tuple[Evidence, ...]:
    """A plain-text file's heading: its first paragraph (after a dateline) when that is one short
    line without closing punctuation."""
    from threatqa.ingest_meta import dateline_date

    paras = [p.strip() for p in re.split(r"\n[ \t]*\n", text.lstrip(), maxsplit=3)[:3]]
    if paras and dateline_date(paras[0]):
        paras = paras[1:]
    first = paras[0] if paras else ""
    if first and "\n" not in first and len(first) <= 120 and not re.search(r"[.,;:!?]$", first):
        return (Evidence(first, "first heading"),)
    return ()


def _read_markdown(data: bytes) -> Extracted:
    text = decode(data)
    titles, dates, start = [], [], 0
    front = re.match(r"---[ \t]*\n(.*?\n)---[ \t]*(?:\n|$)", text, re.DOTALL)
    if front:
        start = front.end()
        fields = dict(re.findall(r"^([A-Za-z_]+)\s*:\s*(.*?)\s*$", front.group(1), re.MULTILINE))
        if fields.get("title", "").strip("'\""):
            titles.append(Evidence(fields["title"].strip("'\""), "front matter"))
        if fields.get("date"):
            dates.append(Evidence(fields["date"].strip("'\""), "front matter"))
    heading = re.search(r"^#\s+(.+?)\s*#*\s*$|^(\S.*)\n=+[ \t]*$", text[start:], re.MULTILINE)
    if heading:
        from threatqa.ingest_display import markdown_plain

        titles.append(Evidence(markdown_plain(heading.group(1) or heading.group(2)), "first heading"))
    return Extracted(text, titles=tuple(titles), dates=tuple(dates), header_start=start, markdown=True)


def _joined(paragraphs: list[str]) -> str:
    return "\n\n".join(p for p in (" ".join(p.split()) for p in paragraphs) if p)


def _read_html(data: bytes) -> Extracted:
    from threatqa.ingest_html import read_html

    page = read_html(decode(data))
    return Extracted(_joined(page.paragraphs), titles=page.titles, dates=page.dates)


def _read_pdf(data: bytes) -> Extracted:
    from threatqa.ingest_pdf import read_pdf

    pdf = read_pdf(data)
    parts: list[str] = []
    spans: dict[int, list[int]] = {}
    offset = 0
    for paragraph in pdf.paragraphs:
        if parts:
            parts.append("\n\n")
            offset += 2
        for page, piece in paragraph:
            span = spans.setdefault(page, [offset, offset])
            span[1] = offset + len(piece)
            parts.append(piece)
            offset += len(piece)
    pages = tuple(PageSpan(page, start, end) for page, (start, end) in sorted(spans.items()))
    titles = (Evidence(pdf.title, "first heading"),) if pdf.title else ()
    return Extracted(
        "".join(parts), pages=pages, titles=titles, file_title=pdf.meta_title, file_date=pdf.meta_created,
        warnings=pdf.warnings,
    )  # fmt: skip


def _read_docx(data: bytes) -> Extracted:
    import docx
    from docx.table import Table
    from docx.text.paragraph import Paragraph

    with zipfile.ZipFile(io.BytesIO(data)) as archive:
        unpacked = sum(member.file_size for member in archive.infolist())
    if unpacked > MAX_UNPACKED_BYTES:
        raise IngestError(
            f"unpacks to {unpacked / 1048576:.0f} MB, over the {MAX_UNPACKED_BYTES / 1048576:.0f} MB limit "
            "(a zip bomb?)"
        )
    document = docx.Document(io.BytesIO(data))
    paragraphs, heading = [], None
    for element in document.element.body.iterchildren():
        if element.tag.endswith("}p"):
            paragraph = Paragraph(element, document)
            paragraphs.append(paragraph.text)
            # a style lookup is slow in python-docx: only the opening paragraphs can hold the title
            if heading is None and len(paragraphs) <= 10 and paragraph.text.strip():
                style = (paragraph.style.name if paragraph.style is not None else "") or ""
                heading = " ".join(paragraph.text.split()) if style in ("Title", "Heading 1") else None
        elif element.tag.endswith("}tbl"):
            for row in Table(element, document).rows:
                paragraphs.append(" | ".join(cell.text for cell in row.cells))
    props = document.core_properties
    return Extracted(
        _joined(paragraphs),
        titles=(Evidence(heading, "first heading"),) if heading else (),
        file_title=props.title or None,
        file_date=props.created,
    )


READERS: dict[str, Callable[[bytes], Extracted]] = {
    ".txt": _read_text,
    ".md": _read_markdown,
    ".markdown": _read_markdown,
    ".html": _read_html,
    ".htm": _read_html,
    ".pdf": _read_pdf,
    ".docx": _read_docx,
}
