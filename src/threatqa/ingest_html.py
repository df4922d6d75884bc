"""HTML -> the page's main content as paragraphs, with title and date evidence (ingest stage).

The page is parsed once with lxml (libxml2: linear time, and a document nested deeper than 256
elements stops the parser, so it is refused rather than indexed in part). Boilerplate removal
is trafilatura's (Apache-2.0): navigation, headers, footers, cookie banners and scripts are left
out. When trafilatura finds no main content (a very short page), the body is read without the
usual furniture elements instead.
"""

from __future__ import annotations

import copy
import re
from dataclasses import dataclass
from typing import Any

from threatqa.errors import IngestError
from threatqa.ingest_meta import Evidence

_META_TITLES = ("citation_title", "dc.title", "dcterms.title")
_META_DATES = (
    "date", "dc.date", "dc.date.issued", "dcterms.created", "dcterms.issued", "dcterms.date",
    "article:published_time", "citation_publication_date", "citation_date", "publication_date", "datepublished",
)  # fmt: skip
_FURNITURE_TAGS = (
    "script", "style", "noscript", "template", "svg", "nav", "header", "footer", "aside", "form", "button",
    "iframe", "head", "dialog",
)  # fmt: skip
_FURNITURE_CLASS = re.compile(r"cookie|consent|banner|breadcrumb|skip|menu|navbar|share|newsletter", re.IGNORECASE)
_BLOCKS = frozenset(
    ("p", "div", "section", "article", "main", "li", "ul", "ol", "table", "tr", "td", "th", "h1", "h2", "h3", "h4",
     "h5", "h6", "blockquote", "pre", "figure", "figcaption", "dl", "dt", "dd", "hr", "address", "br")
)  # fmt: skip


@dataclass(frozen=True)
class HtmlPage:
    paragraphs: list[str]
    titles: tuple[Evidence, ...]
    dates: tuple[Evidence, ...]


def read_html(text: str) -> HtmlPage:
    """Main-content paragraphs of an HTML page and the title and date it states."""
    import lxml.html

    text = re.sub(r"^\s*<\?xml[^>]*\?>", "", text)  # lxml refuses a str with an encoding declaration
    if not text.strip():
        raise IngestError("empty HTML file")
    parser = lxml.html.HTMLParser(remove_comments=True, remove_pis=True)
    tree = lxml.html.document_fromstring(text, parser=parser)
    if any("ERR_RESOURCE_LIMIT" in str(error) or "Excessive depth" in str(error) for error in parser.error_log):
        raise IngestError("HTML nested deeper than the parser's limit of 256 elements (a broken or hostile page)")
    titles, dates = _evidence(tree)
    paragraphs = _main_content(tree) or _body_text(tree)
    return HtmlPage(paragraphs, titles, dates)


def _evidence(tree: Any) -> tuple[tuple[Evidence, ...], tuple[Evidence, ...]]:
    metas = {}
    for meta in tree.iter("meta"):
        key = (meta.get("name") or meta.get("property") or meta.get("itemprop") or "").strip().lower()
        if key and meta.get("content") and key not in metas:
            metas[key] = meta.get("content").strip()
    titles = [Evidence(metas[key], f"<meta name={key}>") for key in _META_TITLES if metas.get(key)]
    h1 = next((" ".join(h.text_content().split()) for h in tree.iter("h1") if h.text_content().strip()), None)
    if h1:
        titles.append(Evidence(h1, "first heading"))
    title = tree.find(".//title")
    if title is not None and title.text_content().strip():
        titles.append(Evidence(" ".join(title.text_content().split()), "<title>"))
    dates = [Evidence(metas[key], f"<meta name={key}>") for key in _META_DATES if metas.get(key)]
    time = next(iter(tree.iter("time")), None)
    if time is not None:
        dates.append(Evidence(time.get("datetime") or time.text_content(), "<time>"))
    return tuple(titles), tuple(dates)


def _main_content(tree: Any) -> list[str]:
    """Paragraphs of trafilatura's main content: headings, paragraphs, list items, table rows."""
    import trafilatura
    from lxml import etree

    xml = trafilatura.extract(
        copy.deepcopy(tree), output_format="xml", include_comments=False, include_tables=True, include_images=False,
        include_links=False, include_formatting=False, with_metadata=False, deduplicate=False,
    )  # fmt: skip
    if not xml:
        return []
    main = etree.fromstring(xml.encode("utf-8")).find("main")
    if main is None:
        return []
    paragraphs: list[str] = []
    for element in main:
        if element.tag == "list":
            paragraphs.extend(_flat(item) for item in element.iter("item"))
        elif element.tag == "table":
            paragraphs.extend(" | ".join(_flat(cell) for cell in row.iter("cell")) for row in element.iter("row"))
        else:
            paragraphs.append(_flat(element))
    return [p for p in paragraphs if p]


def _flat(element: Any) -> str:
    return " ".join("".join(element.itertext()).split())


def _body_text(tree: Any) -> list[str]:
    """The body without furniture elements, one paragraph per block element (linear walk)."""
    from lxml import etree

    body = tree.find("body")
    if body is None:
        return []
    for element in list(body.iter()):
        if not isinstance(element.tag, str):
            continue
        marks = f"{element.get('id', '')} {element.get('class', '')} {element.get('role', '')}"
        if element.tag in _FURNITURE_TAGS or _FURNITURE_CLASS.search(marks) or marks.strip() == "navigation":
            element.drop_tree() if element.getparent() is not None else None
    parts: list[str] = []
    for event, element in etree.iterwalk(body, events=("start", "end")):
        if element.tag in _BLOCKS:
            parts.append("\n\n")
        if event == "start" and element.text:
            parts.append(element.text)
        if event == "end" and element.tail:
            parts.append(element.tail)
    return [" ".join(p.split()) for p in "".join(parts).split("\n\n") if p.strip()]
