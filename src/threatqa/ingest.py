"""Stage 1: files in the docs folder -> `Document` (extracted text plus metadata).

For .txt and .md the extracted text is the file itself (newlines normalised), so a citation's
offsets can be checked against the file with any text editor. HTML (main content), PDF
(paragraphs from the text layer, page furniture dropped) and DOCX are reduced to plain text with
paragraphs separated by blank lines; PDF keeps its page boundaries. The readers are in
`ingest_formats` (PDF layout in `ingest_pdf`, HTML in `ingest_html`), the order of evidence for
titles and dates in `ingest_meta`, displayed text and cross-format keys in `ingest_display`.

One bad entry never stops a build: each file is read in isolation (a parser's exception, an
unreadable file, a name that is not UTF-8, a link out of the docs folder, a file over the size
or time limit) and is skipped with a one-line warning naming it.
"""

from __future__ import annotations

import hashlib
import os
import re
import stat
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

from threatqa.errors import ConfigError, IngestError
from threatqa.ingest_display import markdown_plain
from threatqa.ingest_formats import MAX_UNPACKED_BYTES, PARSED, SUPPORTED, Extracted, PageSpan
from threatqa.ingest_meta import Evidence, dateline_date, first, parse_date, plausible_file_date, plausible_title
from threatqa.ingest_worker import Extractor

__all__ = [
    "EXTRACTION_VERSION", "MAX_UNPACKED_BYTES", "SUPPORTED", "Document", "Extracted", "IngestLimits", "PageSpan",
    "document_id", "file_sha256", "iter_files", "load_documents", "read_document",
]  # fmt: skip

# Bumped when extraction gives other text for the same file; an index built with another version
# is stale (for manifest.input_fingerprint to include; see the ingest hand-over notes).
EXTRACTION_VERSION = 2
_FILE_DATE_SOURCE = {".pdf": "PDF metadata (CreationDate)", ".docx": "DOCX core properties (created)"}


@dataclass(frozen=True)
class Document:
    """One source file, its extracted text and what is known about it."""

    id: str
    path: str  # relative to the docs folder, with forward slashes
    title: str
    sha256: str
    date: str | None
    text: str
    body_start: int = 0  # passages start here; before it: a header (front matter, title, dateline)
    pages: tuple[PageSpan, ...] = ()
    date_source: str | None = None  # where the date was found (ingest_meta's order of evidence)
    title_source: str | None = None
    warnings: tuple[str, ...] = ()  # said at indexing time (pages without a text layer, ...); not stored

    def page_at(self, offset: int) -> int | None:
        """The 1-based PDF page that holds `offset`, or None for documents without pages."""
        for span in self.pages:
            if span.start <= offset < span.end:
                return span.page
        return self.pages[-1].page if self.pages and offset >= self.pages[-1].start else None


@dataclass(frozen=True)
class IngestLimits:
    """Per-file limits and policy of a build (settings max_file_mb, extract_timeout, follow_outside_links)."""

    max_file_mb: float = 50.0
    extract_timeout: float = 120.0  # seconds; 0: no limit, parsers run in this process
    follow_outside_links: bool = False

    @classmethod
    def from_settings(cls, settings: object) -> IngestLimits:
        return cls(
            float(getattr(settings, "max_file_mb", cls.max_file_mb)),
            float(getattr(settings, "extract_timeout", cls.extract_timeout)),
            bool(getattr(settings, "follow_outside_links", cls.follow_outside_links)),
        )

    @classmethod
    def from_environment(cls, max_file_mb: float | None = None) -> IngestLimits:
        """The limits the THREATQA_* settings give (defaults when the settings are invalid)."""
        from threatqa.config import Settings

        try:
            limits = cls.from_settings(Settings.load())
        except ConfigError:
            limits = cls()
        return limits if max_file_mb is None else cls(max_file_mb, limits.extract_timeout, limits.follow_outside_links)


def document_id(rel_path: str) -> str:
    """A stable id from the relative path, so an edited file keeps its id."""
    return hashlib.sha256(rel_path.encode("utf-8")).hexdigest()[:16]


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def shown(text: str) -> str:
    """Text safe to print: undecodable bytes of a file name (surrogates) as \\xNN escapes."""
    try:
        return text.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")
    except UnicodeEncodeError:
        return text.encode("utf-8", "backslashreplace").decode("utf-8")


def iter_files(
    docs_dir: Path, warn: Callable[[str], None] | None = None, follow_outside_links: bool | None = None
) -> Iterator[Path]:
    """Every non-hidden, readable regular file below docs_dir, in a stable order. Refused (with a
    warning when `warn` is given): names that are not UTF-8, links that resolve outside docs_dir
    (unless `follow_outside_links`; None: the THREATQA_FOLLOW_OUTSIDE_LINKS setting), files that
    cannot be opened, and anything that is not a regular file (FIFOs, devices)."""
    if follow_outside_links is None:
        follow_outside_links = IngestLimits.from_environment().follow_outside_links
    root = docs_dir.resolve()
    for path in sorted(docs_dir.rglob("*")):
        rel = path.relative_to(docs_dir)
        if any(part.startswith(".") for part in rel.parts) or path.is_dir():
            continue
        problem = _refusal(path, root, follow_outside_links)
        if problem:
            if warn is not None and problem != "-":
                warn(f"warning: skipped {shown(rel.as_posix())}: {problem}")
            continue
        yield path


def _refusal(path: Path, root: Path, follow_outside_links: bool) -> str | None:
    """Why `path` is not read ("-": silently, e.g. a dangling link), or None when it may be."""
    try:
        path.relative_to(path.anchor).as_posix().encode("utf-8")
    except UnicodeEncodeError:
        return "the file name is not valid UTF-8; rename it"
    real = Path(os.path.realpath(path))
    if not follow_outside_links and real != root and root not in real.parents:
        return "a link to a file outside the docs folder (set THREATQA_FOLLOW_OUTSIDE_LINKS=true to index such files)"
    try:
        mode = os.stat(path).st_mode
        if not stat.S_ISREG(mode):
            return "-" if stat.S_ISDIR(mode) else "not a regular file"
        os.close(os.open(path, os.O_RDONLY | os.O_NONBLOCK))
    except FileNotFoundError:
        return "-"
    except OSError as exc:
        return f"cannot be opened ({type(exc).__name__}: {exc.strerror or exc})"
    return None


def load_documents(
    docs_dir: Path, max_file_mb: float = 50.0, warn: Callable[[str], None] = print, limits: IngestLimits | None = None
) -> list[Document]:
    """Read every supported file below docs_dir; a file that cannot be used, for any reason, gets
    a one-line warning naming it and is skipped. `limits` None: the THREATQA_* settings, with
    `max_file_mb` as given."""
    if not docs_dir.is_dir():
        raise IngestError(f"docs folder not found: {docs_dir}")
    limits = limits or IngestLimits.from_environment(max_file_mb)
    documents = []

    def say(message: str) -> None:
        warn(shown(message))

    with Extractor(limits.extract_timeout) as extractor:
        for path in iter_files(docs_dir, say, limits.follow_outside_links):
            rel = path.relative_to(docs_dir).as_posix()
            try:
                document = read_document(path, rel, limits.max_file_mb, extractor)
            except IngestError as exc:
                say(f"warning: skipped {rel}: {exc}")
                continue
            except Exception as exc:  # any fault in one file (EIO, PermissionError, a parser bug) skips that file
                say(f"warning: skipped {rel}: {type(exc).__name__}: {exc}")
                continue
            documents.extend([document])
            for note in document.warnings:
                say(f"warning: {rel}: {note}")
    return documents


def read_document(path: Path, rel_path: str, max_file_mb: float = 50.0, extractor: Extractor | None = None) -> Document:
    """Read one file into a Document, or raise IngestError saying why it cannot be used. With an
    `extractor`, HTML, PDF and DOCX are parsed under its time limit; without, in this process."""
    suffix = path.suffix.lower()
    if suffix not in SUPPORTED:
        raise IngestError(f"unsupported file type {suffix or '(none)'!r}; supported: {', '.join(SUPPORTED)}")
    info = path.stat()
    if info.st_size > max_file_mb * 1024 * 1024:
        raise IngestError(
            f"file is {info.st_size / 1048576:.0f} MB, over the {max_file_mb:g} MB limit (THREATQA_MAX_FILE_MB)"
        )
    data = path.read_bytes()
    use = extractor if extractor is not None and suffix in PARSED else Extractor(0)
    extracted = use.extract(suffix, data)
    if not extracted.text.strip():
        raise IngestError("no text in file (empty, or a PDF without a text layer)")
    written = datetime.fromtimestamp(info.st_mtime)
    title, date, body_start = _describe(extracted, suffix, written)
    if not extracted.text[body_start:].strip():
        raise IngestError("no text in file after its header")
    title = title or Evidence(_title_from_name(path), "file name")
    return Document(
        id=document_id(rel_path),
        path=rel_path,
        title=title.value,
        sha256=hashlib.sha256(data).hexdigest(),
        date=date.value if date else None,
        text=extracted.text,
        body_start=body_start,
        pages=extracted.pages,
        date_source=date.source if date else None,
        title_source=title.source,
        warnings=extracted.warnings,
    )


def _describe(extracted: Extracted, suffix: str, written: datetime) -> tuple[Evidence | None, Evidence | None, int]:
    """Title and date by the order of evidence (ingest_meta), and where the body starts: after
    the opening title and dateline paragraphs (kept as the body when nothing else follows)."""
    text = extracted.text
    titles = [Evidence(" ".join(t.value.split()), t.source) for t in extracted.titles if t.value.strip()]
    names = {_norm(t.value) for t in titles}
    header_end = before_title = extracted.header_start
    dateline: str | None = None
    title_seen = False
    for start, end in _leading_paragraphs(text, extracted.header_start, 4):
        plain = markdown_plain(text[start:end]) if extracted.markdown else text[start:end]
        if dateline is None and (day := dateline_date(plain)):
            dateline, header_end = day, end
            before_title = end if not title_seen else before_title
        elif not title_seen and _norm(plain) in names:
            title_seen, header_end = True, end
        else:
            break
    if not text[header_end:].strip():
        header_end = before_title  # nothing but a title: it is the text (a one-line note)
    stated = [Evidence(day, d.source) for d in extracted.dates if (day := parse_date(d.value))]
    file_day = plausible_file_date(extracted.file_date, written)
    date = first(
        *stated,
        Evidence(dateline, "dateline") if dateline else None,
        Evidence(file_day, _FILE_DATE_SOURCE.get(suffix, "file metadata")) if file_day else None,
    )
    file_title = plausible_title(extracted.file_title)
    title = first(*titles, Evidence(file_title, "file metadata") if file_title else None)
    body_start = header_end + len(text[header_end:]) - len(text[header_end:].lstrip())
    return title, date, body_start


def _leading_paragraphs(text: str, start: int, count: int) -> list[tuple[int, int]]:
    spans = []
    for match in re.finditer(r"\S(?:.|\n(?![ \t]*\n))*", text[start : start + 4000]):
        spans.append((start + match.start(), start + match.end()))
        if len(spans) == count:
            break
    return spans


def _norm(text: str) -> str:
    return " ".join(text.split()).casefold()


def _title_from_name(path: Path) -> str:
    """'NCA-annual-report-2023-07-17' -> 'NCA annual report 2023-07-17' (dates keep their hyphens)."""
    words = re.sub(r"(?<!\d)[-_]+|[-_]+(?!\d)", " ", path.stem).split()
    title = " ".join(words)
    return title[:1].upper() + title[1:] if title else path.name
