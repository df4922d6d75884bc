"""The Gradio chat UI: format answers for the browser; every word of document text is escaped.

Document text is untrusted. It only ever reaches the browser through Markdown components
(never `gr.HTML`) after `escape_markdown`, which turns HTML, markdown links and images, LaTeX
and mermaid fences into literal text; LaTeX rendering is switched off as well. The only markup
in a reply is the fixed framing made here (numbers, citation lines, `<mark>` highlights).
"""

from __future__ import annotations

import logging
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import gradio as gr

from threatqa.answer import ABSTAIN_TEXT, Answer, Passage
from threatqa.chunking import Span, paragraphs, sentences
from threatqa.config import Settings
from threatqa.engine import Engine
from threatqa.errors import AuditError, ThreatQAError
from threatqa.lexical import word_tokens

if TYPE_CHECKING:
    from threatqa.api import Gate

_log = logging.getLogger("threatqa.ui")

EXAMPLE_QUESTIONS = (
    "How many people are involved in serious organised crime in the UK?",
    "Which hostile states use cybercriminals or organised crime groups?",
    "How much money is laundered through the UK each year?",
)
CONTEXT_CHARS = 700  # surrounding text shown on each side of a passage in "view in context"
BUSY_TEXT = "The server is busy answering other questions; try again in a moment."
UNRECORDED_TEXT = "The audit log could not be written, so the question was not answered; try again later."
# every ASCII punctuation character may be backslash-escaped in CommonMark; <, > and & become entities
_PUNCTUATION = re.compile(r"([!\"#$%'()*+,\-./:;=?@\[\\\]^_`{|}~])")
_THEME_FONTS = ["system-ui", "-apple-system", "Segoe UI", "Roboto", "Helvetica Neue", "Arial", "sans-serif"]
_MONO_FONTS = ["ui-monospace", "SFMono-Regular", "Menlo", "Consolas", "monospace"]
CSS = "mark { background: #fde68a; color: inherit; padding: 0 1px; } .tqa-status { opacity: 0.8; }"


def escape_markdown(text: str) -> str:
    """Text that Markdown (and the HTML sanitiser after it) shows literally, character for character."""
    escaped = _PUNCTUATION.sub(r"\\\1", text)
    return escaped.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


def best_sentence(question: str, text: str) -> Span | None:
    """The sentence of `text` sharing the most word stems with the question (the first on ties)."""
    terms = set(word_tokens(question))
    best, best_overlap = None, 0
    for paragraph in paragraphs(text):
        for sentence in sentences(text, paragraph):
            overlap = len(terms.intersection(word_tokens(text[sentence.start : sentence.end])))
            if overlap > best_overlap:
                best, best_overlap = sentence, overlap
    return best


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


def citation_line(passage: Passage) -> str:
    cite = passage.citation
    return (
        f"**[{passage.rank}]** {escape_markdown(cite.title)} · {escape_markdown(dated(cite.date, cite.date_source))} · "
        f"{escape_markdown(cite.location())} · relevance {passage.relevance:.2f}"
    )


def dated(date: str | None, source: str | None) -> str:
    """'2023-07-17 (dateline)': the date and where it was found, or 'undated'."""
    if not date:
        return "undated"
    return f"{date} ({source})" if source else date


def format_passage(passage: Passage, question: str) -> str:
    """Citation line, then the passage quoted with its best-matching sentence highlighted."""
    body = marked(passage.text, best_sentence(question, passage.text))
    return f"{citation_line(passage)}\n\n{quote_block(body)}"


def format_answer(answer: Answer) -> str:
    """The chat reply: quoted passages with numbered citations, or the abstention framing."""
    blocks = [f"*Note: {escape_markdown(notice)}*" for notice in answer.notices]
    if not answer.answered:
        blocks.append(f"**{ABSTAIN_TEXT}**")
        if answer.passages:
            blocks.append("Nearest passages (not close enough to answer):")
    blocks += [format_passage(passage, answer.question) for passage in answer.passages]
    if not answer.answered:
        searched = ", ".join(escape_markdown(path) for path in answer.searched) or "none"
        blocks.append(f"Documents searched: {searched}")
    return "\n\n".join(blocks)


def format_context(text: str, start: int, end: int, chars: int = CONTEXT_CHARS) -> str:
    """The passage text[start:end] inside whole paragraphs of surrounding text, the exact span marked."""
    around = [p for p in paragraphs(text) if p.end > start - chars and p.start < end + chars]
    first = min([start, *(p.start for p in around)])
    last = max([end, *(p.end for p in around)])
    lead = "…\n\n" if first > 0 else ""
    tail = "\n\n…" if last < len(text) else ""
    body = marked(text[first:last], Span(start - first, end - first))
    return f"{lead}{body}{tail}"


@dataclass(frozen=True)
class Shown:
    """What the page keeps about one passage of a reply, for "view in context" and copying."""

    label: str
    document_id: str
    start: int
    end: int
    heading: str
    reference: str


def shown_passages(answer: Answer) -> list[Shown]:
    result = []
    for passage in answer.passages:
        cite = passage.citation
        result.append(
            Shown(
                label=f"[{passage.rank}] {cite.title}, {cite.location()}",
                document_id=cite.document_id,
                start=cite.start,
                end=cite.end,
                heading=f"**[{passage.rank}]** {escape_markdown(cite.title)} · {escape_markdown(cite.source)} · "
                f"{escape_markdown(cite.location())}, lines {cite.line_start}–{cite.line_end}, "
                f"characters {cite.start}–{cite.end}",
                reference=passage.reference(),
            )
        )
    return result


def theme() -> gr.themes.Base:
    """The default look with system fonts: nothing is fetched from Google Fonts or any other site."""
    return gr.themes.Default(font=_THEME_FONTS, font_mono=_MONO_FONTS)


def status_text(engine: Engine) -> str:
    status = engine.status()
    line = (
        f"Mode: **{status.mode}** · {status.documents} documents · {status.passages} passages · "
        f"index {escape_markdown(status.index_version)}"
    )
    return "\n\n".join([line, *(f"*{escape_markdown(notice)}*" for notice in status.notices)])


def request_user(settings: Settings, headers: Mapping[str, str] | None) -> str | None:
    """The portal user (auth=header) for the audit log; the access middleware has already checked it."""
    if headers is None or settings.auth != "header":
        return None
    return (headers.get(settings.auth_header.lower()) or headers.get(settings.auth_header) or "").strip() or None


def build_ui(engine: Engine, settings: Settings, gate: Gate) -> gr.Blocks:
    """The chat page; `gate` bounds how many questions run and wait (shared with the JSON API)."""
    handlers = _Handlers(engine, settings, gate)
    choices = [(f"{d.title} ({d.path})", d.id) for d in engine.documents()]
    with gr.Blocks(title="ThreatQA", analytics_enabled=False) as blocks:
        gr.Markdown("## ThreatQA: answers quoted from the threat assessments")
        gr.Markdown(status_text(engine), elem_classes="tqa-status", latex_delimiters=[], elem_id="tqa-status")
        replies = gr.State([])  # per reply, in chat order: {"id": audit id, "passages": [Shown as dict]}
        current = gr.State(-1)  # the reply whose passages "view in context" offers
        with gr.Row():
            with gr.Column(scale=3):
                chat = gr.Chatbot(
                    label="Answers", height=560, latex_delimiters=[], sanitize_html=True, allow_tags=False,
                    buttons=["copy"], elem_id="tqa-chat", placeholder="Ask a question about the documents.",
                )  # fmt: skip
                question = gr.Textbox(
                    show_label=False, placeholder="Ask a question…", max_length=settings.max_question_chars,
                    elem_id="tqa-question", submit_btn=True,
                )  # fmt: skip
                gr.Examples([[q] for q in EXAMPLE_QUESTIONS], inputs=question, label="Example questions")
            with gr.Column(scale=2):
                only = gr.Dropdown(choices, multiselect=True, label="Search only these documents (empty: all)")
                with gr.Accordion("View in context", open=False, elem_id="tqa-context-panel"):
                    pick = gr.Dropdown([], label="Passage (click a reply to choose its passages)", elem_id="tqa-pick")
                    context = gr.Markdown("Ask a question, then choose one of its passages.", latex_delimiters=[],
                                          elem_id="tqa-context", sanitize_html=True, max_height=480)  # fmt: skip
                    reference = gr.Textbox(label="Reference", buttons=["copy"], interactive=False, elem_id="tqa-ref")
        question.submit(
            handlers.ask, [question, chat, replies, only], [chat, replies, current, pick, context, reference, question],
            api_name="chat", api_visibility="undocumented",
        )  # fmt: skip
        chat.like(handlers.feedback, [replies], None, api_visibility="undocumented")
        chat.select(
            handlers.select_reply, [replies], [current, pick, context, reference], api_visibility="undocumented"
        )
        pick.input(
            handlers.view, [pick, replies, current], [context, reference], api_name="context",
            api_visibility="undocumented",
        )  # fmt: skip
        gr.api(handlers.ask_json, api_name="ask")
    return blocks


Reply = dict[str, Any]  # {"id": audit id or None, "passages": [vars(Shown), ...]}


MAX_HISTORY = 200  # chat messages kept in a session


class _Handlers:
    """Event handlers: parse, call the engine, format. Errors reach the user as plain messages."""

    def __init__(self, engine: Engine, settings: Settings, gate: Gate) -> None:
        self.engine, self.settings, self.gate = engine, settings, gate

    def _answer(self, question: object, k: object, documents: object, request: gr.Request | None) -> Answer:
        """The engine's answer; the request is checked by the engine, as for the JSON API."""
        user = request_user(self.settings, request.headers if request else None)
        try:
            self.engine.check_request(question, k, documents or None)  # before waiting for a slot
            with self.gate.slot():
                return self.engine.ask(question, k, documents or None, user=user, channel="ui")  # type: ignore[arg-type]
        except AuditError as exc:  # its message names the log's file: for the server log, not for users
            _log.error("audit log write failed: %s", exc)
            raise gr.Error(UNRECORDED_TEXT) from None
        except ThreatQAError as exc:  # includes Busy; messages are written for users
            raise gr.Error(_sentence(str(exc))) from None

    def ask(
        self, question: str, history: list[dict[str, Any]], replies: list[Reply], documents: list[str] | None,
        request: gr.Request,
    ) -> tuple[Any, ...]:  # fmt: skip
        """Append the question and its reply to the chat; offer the reply's passages for "view in context"."""
        answer = self._answer(question, None, documents, request)
        reply = {"id": answer.id, "passages": [vars(s) for s in shown_passages(answer)]}
        history = [
            *history[-MAX_HISTORY:],  # the client sends the history: a forged, huge one is cut
            {"role": "user", "content": escape_markdown(str(question))},
            {"role": "assistant", "content": format_answer(answer)},
        ]
        replies = [*replies, reply]
        return history, replies, len(replies) - 1, *self._offer(reply), ""

    def ask_json(self, question: str, k: int = 5, documents: list[str] | None = None,
                 request: gr.Request = None) -> dict[str, Any]:  # type: ignore[assignment]  # fmt: skip
        """Answer a question: the same object as `threatqa ask --json` (gradio_client api_name "/ask")."""
        return self._answer(question, k, documents, request).to_json()

    def _offer(self, reply: Reply) -> tuple[Any, str, str]:
        passages = reply["passages"]
        if not passages:
            return gr.Dropdown(choices=[], value=None), "This reply quotes no passage.", ""
        choices = [(p["label"], i) for i, p in enumerate(passages)]
        return (gr.Dropdown(choices=choices, value=0), *self._context(passages[0]))

    def _context(self, shown: dict[str, Any]) -> tuple[str, str]:
        try:
            document = self.engine.index.document(shown["document_id"])
        except KeyError:
            return "The document of this passage is no longer indexed.", shown["reference"]
        body = format_context(document.text, shown["start"], shown["end"])
        return f"{shown['heading']}\n\n{quote_block(body)}", shown["reference"]

    def view(self, pick: int | None, replies: list[Reply], current: int) -> tuple[str, str]:
        """Show the chosen passage of the current reply inside its document."""
        passages = replies[current]["passages"] if 0 <= current < len(replies) else []
        if pick is None or not 0 <= int(pick) < len(passages):
            return "Choose a passage.", ""
        return self._context(passages[int(pick)])

    def select_reply(self, replies: list[Reply], event: gr.SelectData) -> tuple[Any, ...]:
        """Clicking a reply offers its passages in "view in context"."""
        number = _reply_number(event.index)
        if not 0 <= number < len(replies):
            return -1, gr.Dropdown(choices=[], value=None), "Choose a reply.", ""
        return number, *self._offer(replies[number])

    def feedback(self, replies: list[Reply], event: gr.LikeData, request: gr.Request) -> None:
        """Thumbs up/down on a reply, stored in the audit log with the question."""
        number = _reply_number(event.index)
        if event.liked not in (True, False) or not 0 <= number < len(replies) or not replies[number]["id"]:
            return
        try:
            self.engine.feedback(
                replies[number]["id"],
                bool(event.liked),
                user=request_user(self.settings, request.headers if request else None),
            )
        except AuditError as exc:
            _log.error("audit log write failed: %s", exc)
            raise gr.Error(UNRECORDED_TEXT) from None
        except ThreatQAError as exc:
            raise gr.Error(_sentence(str(exc))) from None


def _sentence(message: str) -> str:
    return message[:1].upper() + message[1:]


def _reply_number(index: int | tuple[int, int] | list[int]) -> int:
    """Chat messages alternate question, reply: message i belongs to reply i // 2."""
    first = index[0] if isinstance(index, (tuple, list)) else index
    return int(first) // 2
