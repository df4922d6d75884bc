"""Titles and dates of a document, from one order of evidence (part of the ingest stage).

The order, first found wins (each candidate also says where it came from, `Evidence.source`):

- **Date**: 1. stated in the document's own metadata: YAML front matter `date:`, an HTML
  `<meta>` date (`date`, `dc.date`, `dcterms.created`, `article:published_time`, ...) or a
  `<time datetime>` in the page; 2. a dateline in the document's opening paragraphs (`date
  2023-07-17`, `Date: 17 July 2023`, `Published 17 July 2023`, or a paragraph that is only a
  date); 3. file metadata (PDF `CreationDate`, DOCX core `created`), only when plausible: not a
  known template default, not before 1990 or in the future, and not the day the file itself was
  last written (then it is the time the file was rendered, not the document's date); 4. none.
- **Title**: 1. front matter `title:` or an HTML `<meta>` title (`dc.title`, `citation_title`);
  2. the first heading (Markdown `#`, HTML `<h1>`, DOCX Title or Heading 1 style, a PDF's largest
  line on page 1, a plain-text file's short first line); 3. the HTML `<title>`; 4. file
  metadata (PDF `/Title`, DOCX core title) when plausible (not empty, not a file or template
  name such as "Microsoft Word - x.docx" or "Untitled"); 5. the file name.

The title and dateline paragraphs at the top of the text form its header: passages start after
it (`header_end`), so every format of one report gives the same first passage.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import UTC, date, datetime

MONTHS = {
    name: number
    for number, names in enumerate(
        [("january", "jan"), ("february", "feb"), ("march", "mar"), ("april", "apr"), ("may",), ("june", "jun"),
         ("july", "jul"), ("august", "aug"), ("september", "sep", "sept"), ("october", "oct"),
         ("november", "nov"), ("december", "dec")],
        start=1,
    )
    for name in names
}  # fmt: skip
_MONTH = "|".join(sorted(MONTHS, key=len, reverse=True))
_DATE_PATTERNS = (
    re.compile(r"(?<!\d)(\d{4})-(\d{2})-(\d{2})(?!\d)"),  # 2023-07-17
    re.compile(rf"\b(\d{{1,2}})(?:st|nd|rd|th)?\s+({_MONTH})\.?,?\s+(\d{{4}})\b", re.IGNORECASE),  # 17 July 2023
    re.compile(rf"\b({_MONTH})\.?\s+(\d{{1,2}})(?:st|nd|rd|th)?,?\s+(\d{{4}})\b", re.IGNORECASE),  # July 17, 2023
)
# A dateline: a short paragraph that is a date, optionally after a label ("date", "Published:", ...).
_DATELINE = re.compile(
    r"^[\s*_]*(?:(?:date[d]?|published|issued|updated|last updated|as of)\b\s*(?:on)?\s*:?\s*)?"
    r"(?:(?:mon|tues|wednes|thurs|fri|satur|sun)day,?\s+)?"
    r"(?P<date>.{6,30}?)[\s*_.]*$",
    re.IGNORECASE,
)
# Creation dates that templates and tools stamp on every file they make.
TEMPLATE_DATES = frozenset({"2013-12-23"})  # python-docx's default template (core.xml created 2013-12-23T23:15)
_PLACEHOLDER_TITLES = re.compile(
    r"^(untitled|document\d*|title|presentation\d*|slide \d+|microsoft (word|powerpoint) - .*"
    r"|.*\.(docx?|pdf|odt|rtf|pptx?))$",
    re.IGNORECASE,
)


@dataclass(frozen=True)
class Evidence:
    """A candidate title or date and where it was found."""

    value: str
    source: str  # e.g. "front matter", "<meta name=date>", "<time>", "dateline", "first heading", "PDF metadata"


def parse_date(text: str) -> str | None:
    """The first valid date in `text` as YYYY-MM-DD (ISO, '17 July 2023', 'July 17, 2023'), or None."""
    found: list[tuple[int, str]] = []
    for number, pattern in enumerate(_DATE_PATTERNS):
        for match in pattern.finditer(text):
            groups = match.groups()
            if number == 0:
                y, m, d = int(groups[0]), int(groups[1]), int(groups[2])
            elif number == 1:
                d, m, y = int(groups[0]), MONTHS[groups[1].lower()], int(groups[2])
            else:
                m, d, y = MONTHS[groups[0].lower()], int(groups[1]), int(groups[2])
            try:
                found.append((match.start(), date(y, m, d).isoformat()))
            except ValueError:
                continue
            break
    return min(found)[1] if found else None


def dateline_date(paragraph: str) -> str | None:
    """The date of a paragraph that is only a (labelled) date, such as 'Published: 17 July 2023'."""
    match = _DATELINE.match(paragraph.strip()) if len(paragraph) <= 60 else None
    if match is None:
        return None
    rest = match.group("date").strip(" ,.*_")
    return parse_date(rest) if any(pattern.fullmatch(rest) for pattern in _DATE_PATTERNS) else None


def plausible_file_date(value: datetime | str | None, written: datetime | None) -> str | None:
    """A file-metadata date (PDF CreationDate, DOCX created) as YYYY-MM-DD when it can be the
    document's date: not a template default, not before 1990 or in the future, not the day the
    file was last written (then it is when the file was rendered)."""
    if value is None:
        return None
    day = value.date().isoformat() if isinstance(value, datetime) else parse_date(str(value))
    if day is None or day in TEMPLATE_DATES or not "1990-01-01" <= day <= datetime.now(UTC).date().isoformat():
        return None
    if written is not None and day == written.date().isoformat():
        return None
    return day


def plausible_title(value: str | None) -> str | None:
    """A file-metadata title when it reads as a title, not a file or template name."""
    title = re.sub(r"\s+", " ", value or "").strip()
    if not title or len(title) > 300 or _PLACEHOLDER_TITLES.match(title):
        return None
    return title


def pdf_date(value: str | bytes | None) -> datetime | None:
    """A PDF date string (D:YYYYMMDDHHmmSS...) as a datetime, or None."""
    if isinstance(value, bytes):
        value = value.decode("latin-1", "replace")
    match = re.match(r"(?:D:)?(\d{4})(\d{2})?(\d{2})?", value or "")
    if not match:
        return None
    try:
        return datetime(int(match.group(1)), int(match.group(2) or 1), int(match.group(3) or 1))
    except ValueError:
        return None


def first(*candidates: Evidence | None) -> Evidence | None:
    return next((c for c in candidates if c is not None and c.value), None)
