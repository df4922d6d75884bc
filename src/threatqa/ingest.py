"""Stage 1: files in the docs folder -> `Document` (extracted text plus metadata).

For .txt and .md the extracted text is the file itself (newlines normalised), so a citation's
offsets can be checked against the file with any text editor. HTML, PDF and DOCX are reduced to
plain text with paragraphs separated by blank lines; PDF keeps its page boundaries.
"""

from __future__ import annotations

import hashlib
import io
import re
import zipfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

from threatqa.errors import IngestError

SUPPORTED = (".txt", ".md", ".markdown", ".html", ".htm", ".pdf", ".docx")

# A leading "date 2023-07-17" line (as in the shipped corpus) or "date: ..." front matter.
_DATE_LINE = re.compile(r"^\s*date\s*:?\s*(\d{4}-\d{2}-\d{2})\b[^\n]*(?:\n|$)", re.IGNORECASE)
_ISO_DATE = re.compile(r"(\d{4})-?(\d{2})-?(\d{2})")


@dataclass(frozen=True)
class PageSpan:
    """Where one PDF page lies in the extracted text (1-based page number)."""

    page: int
    start: int
    end: int


@dataclass(frozen=True)
class Document:
    """One source file, its extracted text and what is known about it."""

    id: str
    path: str  # relative to the docs folder, with forward slashes
    title: str
    sha256: str
    date: str | None
    text: str
    body_start: int = 0  # passages start here; before it: a metadata header (date line, front matter)
    pages: tuple[PageSpan, ...] = ()

    def page_at(self, offset: int) -> int | None:
        """The 1-based PDF page that holds `offset`, or None for documents without pages."""
        for span in self.pages:
            if span.start <= offset < span.end:
                return span.page
        return self.pages[-1].page if self.pages and offset >= self.pages[-1].start else None


@dataclass(frozen=True)
class Extracted:
    """What a format reader returns before the common metadata is added."""

    text: str
    title: str | None = None
    date: str | None = None
    pages: tuple[PageSpan, ...] = ()


def document_id(rel_path: str) -> str:
    """A stable id from the relative path, so an edited file keeps its id."""
    return hashlib.sha256(rel_path.encode("utf-8")).hexdigest()[:16]


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def iter_files(docs_dir: Path) -> Iterator[Path]:
    """Every non-hidden file below docs_dir, in a stable order."""
    for path in sorted(docs_dir.rglob("*")):
        rel = path.relative_to(docs_dir)
        if any(part.startswith(".") for part in rel.parts) or not path.is_file():
            continue
        yield path


def load_documents(docs_dir: Path, max_file_mb: float = 50.0, warn: Callable[[str], None] = print) -> list[Document]:
    """Read every supported file below docs_dir; bad files get a one-line warning and are skipped."""
    if not docs_dir.is_dir():
        raise IngestError(f"docs folder not found: {docs_dir}")
    documents = []
    for path in iter_files(docs_dir):
        rel = path.relative_to(docs_dir).as_posix()
        try:
            documents.append(read_document(path, rel, max_file_mb))
        except IngestError as exc:
            warn(f"warning: skipped {rel}: {exc}")
    return documents


def read_document(path: Path, rel_path: str, max_file_mb: float = 50.0) -> Document:
    """Read one file into a Document, or raise IngestError saying why it cannot be used."""
    suffix = path.suffix.lower()
    reader = _READERS.get(suffix)
    if reader is None:
        raise IngestError(f"unsupported file type {suffix or '(none)'!r}; supported: {', '.join(SUPPORTED)}")
    size = path.stat().st_size
    if size > max_file_mb * 1024 * 1024:
        raise IngestError(f"file is {size / 1048576:.0f} MB, over the {max_file_mb:g} MB limit (THREATQA_MAX_FILE_MB)")
    data = path.read_bytes()
    try:
        extracted = reader(data)
    except IngestError:
        raise
    except Exception as exc:  # parsers raise many types on malformed files
        raise IngestError(f"cannot parse {suffix} file ({type(exc).__name__}: {exc})") from None
    text = extracted.text
    if not text.strip():
        raise IngestError("no text in file (empty, or a PDF without a text layer)")
    body_start, header_date = _header(text) if suffix in (".txt", ".md", ".markdown") else (0, None)
    body_start += len(text[body_start:]) - len(text[body_start:].lstrip())
    if not text[body_start:].strip():
        raise IngestError("no text in file after its header")
    return Document(
        id=document_id(rel_path),
        path=rel_path,
        title=(extracted.title or "").strip() or _title_from_name(path),
        sha256=hashlib.sha256(data).hexdigest(),
        date=extracted.date or header_date,
        text=text,
        body_start=body_start,
        pages=extracted.pages,
    )


def _decode(data: bytes) -> str:
    if b"\x00" in data[:8192]:
        raise IngestError("binary content (NUL bytes) in a text file")
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise IngestError(f"not valid UTF-8 (byte {exc.start}); save it as UTF-8") from None
    return text.replace("\r\n", "\n").replace("\r", "\n")


def _header(text: str) -> tuple[int, str | None]:
    """Length of a leading metadata header (date line or YAML front matter) and the date it states."""
    match = _DATE_LINE.match(text)
    if match:
        return match.end(), match.group(1)
    if text.startswith("---\n"):
        end = text.find("\n---", 4)
        if end != -1:
            front = text[4:end]
            date = re.search(r"^date\s*:\s*['\"]?(\d{4}-\d{2}-\d{2})", front, re.MULTILINE)
            close = text.find("\n", end + 4)
            return (len(text) if close == -1 else close + 1), (date.group(1) if date else None)
    return 0, None


def _title_from_name(path: Path) -> str:
    """'NCA-annual-report-2023-07-17' -> 'NCA annual report 2023-07-17' (dates keep their hyphens)."""
    words = re.sub(r"(?<!\d)[-_]+|[-_]+(?!\d)", " ", path.stem).split()
    title = " ".join(words)
    return title[:1].upper() + title[1:] if title else path.name


def _read_text(data: bytes) -> Extracted:
    return Extracted(_decode(data))


def _read_markdown(data: bytes) -> Extracted:
    text = _decode(data)
    heading = re.search(r"^#\s+(.+?)\s*#*\s*$", text, re.MULTILINE)
    return Extracted(text, title=heading.group(1) if heading else None)


_BLOCK_TAGS = (
    "p", "div", "section", "article", "header", "footer", "aside", "main", "nav", "li", "ul", "ol",
    "table", "tr", "td", "th", "h1", "h2", "h3", "h4", "h5", "h6", "blockquote", "pre", "figure",
    "figcaption", "dl", "dt", "dd", "hr", "address",
)  # fmt: skip


def _read_html(data: bytes) -> Extracted:
    from bs4 import BeautifulSoup

    soup = BeautifulSoup(_decode(data), "html.parser")
    title = soup.title.get_text(" ", strip=True) if soup.title else None
    date = None
    for name in ("date", "dc.date", "article:published_time", "dcterms.created"):
        meta = soup.find("meta", attrs={"name": name}) or soup.find("meta", attrs={"property": name})
        if meta and _ISO_DATE.search(str(meta.get("content", ""))):
            date = "-".join(_ISO_DATE.search(str(meta.get("content", ""))).groups())
            break
    for tag in soup(["script", "style", "noscript", "template", "head", "svg"]):
        tag.decompose()
    for tag in soup.find_all("br"):
        tag.replace_with("\n")
    for tag in soup.find_all(_BLOCK_TAGS):
        tag.insert_before("\n\n")
        tag.insert_after("\n\n")
    return Extracted(_tidy(soup.get_text()), title=title, date=date)


def _read_pdf(data: bytes) -> Extracted:
    from pypdf import PdfReader

    reader = PdfReader(io.BytesIO(data))
    parts: list[str] = []
    pages: list[PageSpan] = []
    offset = 0
    for number, page in enumerate(reader.pages, start=1):
        page_text = _tidy(page.extract_text() or "")
        if not page_text:
            continue
        if parts:
            parts.append("\n\n")
            offset += 2
        pages.append(PageSpan(number, offset, offset + len(page_text)))
        parts.append(page_text)
        offset += len(page_text)
    meta = reader.metadata
    title = meta.title if meta and meta.title else None
    created = meta.creation_date if meta else None
    return Extracted(
        "".join(parts), title=title, date=created.date().isoformat() if created else None, pages=tuple(pages)
    )


MAX_UNPACKED_BYTES = 256 * 1024 * 1024  # a .docx that unpacks to more is refused (zip bomb)


def _read_docx(data: bytes) -> Extracted:
    import docx

    with zipfile.ZipFile(io.BytesIO(data)) as archive:
        unpacked = sum(member.file_size for member in archive.infolist())
    if unpacked > MAX_UNPACKED_BYTES:
        raise IngestError(
            f"unpacks to {unpacked / 1048576:.0f} MB, over the {MAX_UNPACKED_BYTES / 1048576:.0f} MB limit "
            "(a zip bomb?)"
        )
    document = docx.Document(io.BytesIO(data))
    paragraphs = [p.text for p in document.paragraphs]
    for table in document.tables:
        for row in table.rows:
            paragraphs.append(" | ".join(cell.text for cell in row.cells))
    props = document.core_properties
    created = props.created.date().isoformat() if props.created else None
    return Extracted(_tidy("\n\n".join(paragraphs)), title=props.title or None, date=created)


def _tidy(text: str) -> str:
    """Plain text with single spaces inside lines and one blank line between paragraphs."""
    text = text.replace("\r\n", "\n").replace("\r", "\n").replace("\xa0", " ")
    lines = [re.sub(r"[ \t\f\v]+", " ", line).strip() for line in text.split("\n")]
    return re.sub(r"\n{3,}", "\n\n", "\n".join(lines)).strip()


_READERS: dict[str, Callable[[bytes], Extracted]] = {
    ".txt": _read_text,
    ".md": _read_markdown,
    ".markdown": _read_markdown,
    ".html": _read_html,
    ".htm": _read_html,
    ".pdf": _read_pdf,
    ".docx": _read_docx,
}
