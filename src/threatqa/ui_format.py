"""The chat reply as Markdown: every word of document text escaped, the framing fixed.

Document text is untrusted. It only ever reaches the browser through Markdown components
(never `gr.HTML`) after `escape_markdown`, which turns HTML, markdown links and images, LaTeX
and mermaid fences into literal text; LaTeX rendering is switched off as well. The only markup
in a reply is the fixed framing made here: numbers, citation lines, `<mark>` highlights, and
links to this server's own pages (the answer's permalink, a passage in context, an original
file), built from ids and numbers only.
"""

from __future__ import annotations

import re
from urllib.parse import quote

from threatqa.answer import (
    ABSTAIN_TEXT,
    NEAREST_TEXT,
    Answer,
    Citation,
    Passage,
    best_sentence,
    lead,
    match_words,
)
from threatqa.chunking import Span, paragraphs

CONTEXT_CHARS = 700  # surrounding text shown on each side of a passage in "view in context"
# every ASCII punctuation character may be backslash-escaped in CommonMark; <, > and & become entities
_PUNCTUATION = re.compile(r"([!\"#$%'()*+,\-./:;=?@\[\\\]^_`{|}~])")
ANSWER_LINK = re.compile(r"answers/([0-9a-f]{32})\b")  # how a reply names its answer (see `answer_links`)


def escape_markdown(text: str) -> str:
    """Text that Markdown (and the HTML sanitiser after it) shows literally, character for character."""
    escaped = _PUNCTUATION.sub(r"\\\1", text)
    return escaped.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


def marked(text: str, span: Span | None) -> str:
    """Escaped text with `span` wrapped in <mark>, one <mark> per paragraph so that none spans a blank line."""
    if span is None or span.start >= span.end:
        return escape_markdown(text)
    parts = [escape_markdown(text[: span.start])]
    inside = text[span.start : span.end]
    cursor = 0
    for piece in paragraphs(inside):
        parts.append(escape_markdown(inside[cursor : piece.start]))
        parts.append(f"<mark>{escape_markdown(inside[piece.start : piece.end])}</mark>")
        cursor = piece.end
    parts.append(escape_markdown(inside[cursor:]))
    parts.append(escape_markdown(text[span.end :]))
    return "".join(parts)


def quote_block(markdown: str) -> str:
    """Markdown as a blockquote (blank lines kept inside the quote)."""
    return "\n".join(f"> {line}" if line.strip() else ">" for line in markdown.split("\n"))


def dated(date: str | None, source: str | None) -> str:
    """'2023-07-17 (dateline)': the date and where it was found, or 'undated'."""
    if not date:
        return "undated"
    return f"{date} ({source})" if source else date


def passage_link(answer_id: str, rank: int) -> str:
    """The page showing passage `rank` of an answer inside its document (relative to the chat page)."""
    return f"answers/{answer_id}/passages/{rank}#passage"


def file_link(cite: Citation) -> str:
    """The original file, served by document id; a PDF opens at the cited page."""
    page = f"#page={cite.page}" if cite.page is not None and cite.source.lower().endswith(".pdf") else ""
    return f"api/documents/{quote(cite.document_id, safe='')}/file{page}"


def handling(cite: Citation) -> str:
    """' · handling: red, blue' (escaped) under a need-to-know policy, so that an analyst sees who may
    read what they quote; nothing without a policy."""
    return f" · handling: {escape_markdown(cite.handling)}" if cite.handling else ""


def citation_line(passage: Passage, answer: Answer) -> str:
    """'[1] Title · date · para 3 · handling: red · best match · in context · original file'."""
    cite = passage.citation
    top = answer.passages[0].score if answer.passages else 0.0
    strength = match_words(passage, top) if answer.answered else "nearest, may not answer"
    line = (
        f"**[{passage.rank}]** {escape_markdown(cite.title)} · {escape_markdown(dated(cite.date, cite.date_source))} · "
        f"{escape_markdown(cite.location())}{handling(cite)} · *{strength}*"
    )
    if answer.id:
        line += f" · [in context]({passage_link(answer.id, passage.rank)})"
    return line + f" · [original file]({file_link(cite)})"


def sources_line(passage: Passage) -> str:
    """Every file this text appears in, each linked to the original."""
    files = [
        f"[{escape_markdown(cite.source)}, {escape_markdown(cite.location())}]({file_link(cite)}){handling(cite)}"
        for cite in passage.sources
    ]
    return f"Same text in {len(files)} files: " + " · ".join(files)


def format_passage(passage: Passage, answer: Answer) -> str:
    """Citation line, the sources when the text appears in several files, then the passage quoted
    (as a reader sees it) with its best-matching sentence highlighted."""
    shown = passage.shown
    body = marked(shown, best_sentence(answer.question, shown))
    blocks = [citation_line(passage, answer)]
    if passage.also:
        blocks.append(sources_line(passage))
    return "\n\n".join([*blocks, quote_block(body)])


def format_lead(answer: Answer) -> str:
    """The answer first: the best sentence of the top passages, quoted exactly, each with its [n]."""
    items = []
    for item in lead(answer):
        number = f"\\[{item.rank}\\]"
        marker = f"[{number}]({passage_link(answer.id, item.rank)})" if answer.id else number
        items.append(f"> “{escape_markdown(item.text)}” {marker}")
    return "**In the documents' words:**\n\n" + "\n>\n".join(items) if items else ""


def format_answer(answer: Answer, filtered: bool = False) -> str:
    """The chat reply: the lead quotes, then the cited passages, then links to share and export it;
    or, for an abstention, the plain statement that no passage answers and the nearest passages."""
    blocks = [f"*Note: {escape_markdown(notice)}*" for notice in answer.notices]
    if answer.answered:
        blocks.append(format_lead(answer))
    else:
        blocks.append(f"**{ABSTAIN_TEXT}**")
        if answer.passages:
            blocks.append(NEAREST_TEXT)
    blocks += [format_passage(passage, answer) for passage in answer.passages]
    if filtered or not answer.answered:
        label = "Searched only" if filtered else "Documents searched"
        blocks.append(f"{label}: {', '.join(escape_markdown(path) for path in answer.searched) or 'none'}")
    if answer.id:
        link = f"answers/{answer.id}"
        blocks.append(f"[Permalink]({link}) · [Markdown]({link}.md) · [JSON]({link}.json)")
    return "\n\n".join(block for block in blocks if block)


def format_context(text: str, start: int, end: int, chars: int = CONTEXT_CHARS) -> str:
    """The passage text[start:end] inside whole paragraphs of surrounding text, the exact span marked."""
    first, last = context_bounds(text, start, end, chars)
    lead_mark = "…\n\n" if first > 0 else ""
    tail = "\n\n…" if last < len(text) else ""
    body = marked(text[first:last], Span(start - first, end - first))
    return f"{lead_mark}{body}{tail}"


def context_bounds(text: str, start: int, end: int, chars: int = CONTEXT_CHARS) -> tuple[int, int]:
    """Where the context shown around text[start:end] begins and ends: whole paragraphs within `chars`."""
    around = [p for p in paragraphs(text) if p.end > start - chars and p.start < end + chars]
    return min([start, *(p.start for p in around)]), max([end, *(p.end for p in around)])


def context_heading(passage: Passage) -> str:
    cite = passage.citation
    return (
        f"**[{passage.rank}]** {escape_markdown(cite.title)} · {escape_markdown(cite.source)} · "
        f"{escape_markdown(cite.location())}, lines {cite.line_start}–{cite.line_end}, "
        f"characters {cite.start}–{cite.end}{handling(cite)}"
    )


def answer_links(content: object) -> list[str]:
    """The answer ids a chat message links to (a reply names its own answer in its permalink)."""
    return ANSWER_LINK.findall(_text_of(content))


def _text_of(content: object) -> str:
    """A chat message's text, whatever shape the chat gives it in (a string, a dict, a list of parts)."""
    if isinstance(content, str):
        return content
    if isinstance(content, dict):
        return " ".join(_text_of(value) for value in content.values())
    if isinstance(content, (list, tuple)):
        return " ".join(_text_of(value) for value in content)
    return ""
