"""How a passage is shown, and when two passages say the same thing (part of the ingest stage).

A citation quotes the document's extracted text exactly (`document.text[start:end]`); for
Markdown that is the source with its markup. `display_text` derives the form shown to a reader
from that exact span (headings, emphasis and links as their text), so the quote stays checkable
while the reader sees prose. `text_key` is a hash of a passage's displayed text with case,
quotes, dashes and spacing normalised: the same paragraph extracted from the txt, md, html, pdf
and docx copies of one report gets the same key, so a front end can collapse them.
"""

from __future__ import annotations

import hashlib
import re
import unicodedata
from functools import lru_cache
from typing import Any

MARKDOWN_SUFFIXES = (".md", ".markdown")
_QUOTES = str.maketrans({"‘": "'", "’": "'", "‚": "'", "“": '"', "”": '"', "„": '"', "–": "-", "—": "-", "‐": "-"})


def display_text(text: str, source: str) -> str:
    """The form of an exact quote (`document.text[start:end]` of the file `source`) shown to a
    reader: Markdown without its markup; every other format as it is (already plain text)."""
    if not source.lower().endswith(MARKDOWN_SUFFIXES):
        return text
    return markdown_plain(text)


def text_key(text: str, source: str = "") -> str:
    """A hash of the displayed text, normalised (NFKC, case, quotes, dashes, spaces): equal for the
    same passage extracted from different formats of one report."""
    shown = unicodedata.normalize("NFKC", display_text(text, source)).translate(_QUOTES).replace("\xad", "")
    return hashlib.sha256(" ".join(shown.casefold().split()).encode("utf-8")).hexdigest()


def markdown_plain(text: str) -> str:
    """Markdown source as plain text: blocks separated by blank lines, inline markup dropped
    (emphasis, links and images as their text, code as its content); raw HTML kept literally."""
    blocks: list[str] = []
    for token in _parser().parse(text):
        if token.type == "inline":
            blocks.append(_inline(token.children or []))
        elif token.type in ("fence", "code_block", "html_block"):
            blocks.append(token.content.rstrip("\n"))
    return "\n\n".join(block for block in blocks if block.strip())


def _inline(children: list[Any]) -> str:
    parts = []
    for child in children:
        if child.type in ("text", "code_inline", "html_inline"):
            parts.append(child.content)
        elif child.type in ("softbreak", "hardbreak"):
            parts.append("\n")
        elif child.type == "image":
            parts.append(_inline(child.children or []))
    return re.sub(r"[ \t]+\n", "\n", "".join(parts)).strip()


@lru_cache(maxsize=1)
def _parser() -> Any:
    from markdown_it import MarkdownIt

    return MarkdownIt("commonmark")
