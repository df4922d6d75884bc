"""The UI's pure formatting: escaping, the highlighted sentence, the reply and the context view."""

from __future__ import annotations

import re

import gradio as gr
import pytest

from threatqa.answer import ABSTAIN_TEXT
from threatqa.api import Gate
from threatqa.config import Settings
from threatqa.engine import Engine, counted
from threatqa.ui import (
    best_sentence,
    build_ui,
    escape_markdown,
    format_answer,
    format_context,
    marked,
    status_text,
)

HOSTILE = "<img src=x onerror=alert(1)> <script>alert(2)</script> ![x](http://127.0.0.2/x.png) $$x$$ [a](b) *b* `c`"


@pytest.fixture()
def engine(settings: Settings) -> Engine:
    return Engine.start(settings, build="stale", log=lambda message: None)


def _unescape(markdown: str) -> str:
    """What CommonMark shows for escaped text: backslash escapes and entities resolved."""
    text = re.sub(r"\\([!-/:-@\[-`{-~])", r"\1", markdown)
    return text.replace("&lt;", "<").replace("&gt;", ">").replace("&amp;", "&")


def test_escape_markdown_leaves_no_markup() -> None:
    escaped = escape_markdown(HOSTILE + "\n```mermaid\ngraph TD; A-->B\n```")
    assert "<" not in escaped and ">" not in escaped
    assert "![" not in escaped and "](" not in escaped and "`" not in escaped.replace("\\`", "")
    assert "$$" not in escaped
    assert _unescape(escaped) == HOSTILE + "\n```mermaid\ngraph TD; A-->B\n```"


def test_escape_markdown_keeps_entities_literal() -> None:
    assert escape_markdown("&lt;b&gt; & co") == "&amp;lt\\;b&amp;gt\\; &amp; co"
    assert escape_markdown("C:\\temp") == "C\\:\\\\temp"


def test_best_sentence_has_most_question_terms() -> None:
    text = "Fraud is common. Around 59,000 people are involved in organised crime in the UK. It costs money."
    span = best_sentence("How many people are involved in organised crime?", text)
    assert span is not None
    assert text[span.start : span.end] == "Around 59,000 people are involved in organised crime in the UK."
    assert best_sentence("bananas", text) is None


def test_marked_wraps_each_paragraph_of_the_span() -> None:
    from threatqa.chunking import Span

    text = "One <b>.\n\nTwo.\n\nThree."
    assert marked(text, Span(0, 15)) == "<mark>One &lt;b&gt;\\.</mark>\n\n<mark>Two\\.</mark>\n\nThree\\."


def test_status_line_counts_as_people_write_them(engine: Engine) -> None:
    assert [counted(n, "document") for n in (0, 1, 2)] == ["0 documents", "1 document", "2 documents"]
    assert (engine.status().documents, engine.status().passages) == (1, 10)  # the corpus alone
    assert "· 1 document · 10 passages ·" in status_text(engine)


def test_format_answer_quotes_cites_and_highlights(engine: Engine) -> None:
    answer = engine.ask("How many people are involved in serious organised crime in the UK?", 2)
    reply = format_answer(answer)
    assert reply.startswith("**In the documents' words:**\n\n> “There are around 59\\,000 people involved")
    assert f"[\\[1\\]](answers/{answer.id}/passages/1#passage)" in reply  # the lead quote links to its passage
    assert "**[1]** NCA annual assessment speech 2023\\-07\\-17 · 2023\\-07\\-17 \\(dateline\\) · para" in reply
    assert "*best match*" in reply and "relevance" not in reply
    assert reply.endswith(f"[Permalink](answers/{answer.id}) · [Markdown](answers/{answer.id}.md) · "
                          f"[JSON](answers/{answer.id}.json)")  # fmt: skip
    assert "> <mark>There are around 59\\,000 people involved in serious organized crime in the UK" in reply
    assert ABSTAIN_TEXT not in reply


def test_format_answer_abstains_with_nearest_passages(engine: Engine) -> None:
    answer = engine.ask("What is the recipe for banana bread?", 2)
    reply = format_answer(answer)
    assert reply.startswith(f"**{ABSTAIN_TEXT}**\n\nNearest passages, which may not answer it:")
    assert "*nearest, may not answer*" in reply and "In the documents' words" not in reply
    assert "Documents searched: NCA\\-annual\\-assessment\\-speech\\-2023\\-07\\-17\\.txt" in reply


def test_format_context_marks_the_exact_span() -> None:
    text = "\n\n".join(f"Paragraph {n} says <i>{n}</i>." for n in range(1, 30))
    start = text.index("Paragraph 15")
    end = text.index("\n", start)
    shown = format_context(text, start, end, chars=60)
    assert shown.startswith("…\n\n") and shown.endswith("\n\n…")
    assert "<mark>Paragraph 15 says &lt;i&gt;15&lt;\\/i&gt;\\.</mark>" in shown
    assert "Paragraph 13" in shown and "Paragraph 17" in shown
    assert "Paragraph 11 " not in shown and "Paragraph 19 " not in shown


def test_build_ui_documents_the_gradio_api(engine: Engine, settings: Settings) -> None:
    blocks = build_ui(engine, settings, Gate(1, 1))
    assert isinstance(blocks, gr.Blocks)
    names = {dep.api_name for dep in blocks.fns.values()}
    assert {"ask", "chat", "context"} <= names
