"""The Gradio chat UI: ask, read the answer first, follow citations, give feedback, copy.

Each reply names its own answer (its permalink `answers/<id>` is part of the message), and
feedback, "view in context" and "copy answer" take the id from the message they act on, never
from a position in a server-side list: whatever the chat's state (Clear, retry, undo, several
tabs), they reach the right audit record. Formatting lives in `ui_format` (every word of
document text escaped there).
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any

import gradio as gr

from threatqa.answer import Answer, best_sentence, plain_text
from threatqa.auth import request_access, request_user  # who is asking: one answer for the UI and the API
from threatqa.config import Settings
from threatqa.engine import Engine, counted
from threatqa.errors import AuditError, QuestionError, ThreatQAError
from threatqa.policy import Access
from threatqa.ui_format import (
    answer_links,
    context_heading,
    escape_markdown,
    format_answer,
    format_context,
    marked,
    quote_block,
)
from threatqa.ui_history import history_messages

if TYPE_CHECKING:
    from threatqa.api import Gate

__all__ = ["best_sentence", "build_ui", "escape_markdown", "format_answer", "format_context", "marked"]

_log = logging.getLogger("threatqa.ui")

EXAMPLE_QUESTIONS = (
    "How many people are involved in serious organised crime in the UK?",
    "Which hostile states use cybercriminals or organised crime groups?",
    "How much money is laundered through the UK each year?",
)
BUSY_TEXT = "The server is busy answering other questions; try again in a moment."
UNRECORDED_TEXT = "The audit log could not be written, so the question was not answered; try again later."
EMPTY_TEXT = "Type a question first, then press Ask."
QUESTION_TEXT = "Ask a question…"
LOADING_TEXT = "Loading your conversation…"
_THEME_FONTS = ["system-ui", "-apple-system", "Segoe UI", "Roboto", "Helvetica Neue", "Arial", "sans-serif"]
_MONO_FONTS = ["ui-monospace", "SFMono-Regular", "Menlo", "Consolas", "monospace"]
CSS = """
mark { background: #fde68a; color: #1f2937; padding: 0 1px; }
.tqa-status { opacity: 0.85; }
#tqa-hint p { color: #92400e; margin: 0; }
#tqa-chat blockquote { margin-left: 0; }
#tqa-only input, #tqa-pick input { color: #374151; }
@media (max-width: 640px) {
  #tqa-chat .message-row { margin: 8px 2px; }
  #tqa-chat .message-row .message { padding: 2px 4px; }
}
#tqa-only input::placeholder, #tqa-question textarea::placeholder { color: #6b7280; }
"""
MAX_HISTORY = 200  # chat messages kept in a session

# Runs in the page (`head`): the token leaves the address bar once the cookie holds it; a new reply
# is scrolled to its top, the chat's box only (its own autoscroll is off); a message is announced by its text
# (the chat labels it with its Markdown source, escapes and all).
HEAD = """<script>
(() => {
  const url = new URL(window.location.href);
  if (url.searchParams.has("token")) {
    url.searchParams.delete("token");
    history.replaceState(history.state, "", url.pathname + url.search + url.hash);
  }
  const label = (node) => {
    const said = node.getAttribute("aria-label") || "";
    const who = said.split("'s message: ")[0];
    const text = (node.innerText || "").replace(/\\s+/g, " ").trim();
    const role = who === "bot" ? "Answer" : "Question";
    if (said.includes("'s message: ") && text) node.setAttribute("aria-label", `${role}: ${text}`);
  };
  const toTop = (reply) => {  // scroll the chat's own box (not the page) to the reply's first line
    let box = reply.parentElement;
    while (box && box !== document.body && !(box.scrollHeight > box.clientHeight &&
           ["auto", "scroll"].includes(getComputedStyle(box).overflowY))) box = box.parentElement;
    if (!box || box === document.body) return;
    box.scrollTop += reply.getBoundingClientRect().top - box.getBoundingClientRect().top - 8;
  };
  let seen = "";
  new MutationObserver(() => {
    document.querySelectorAll("#tqa-chat [aria-label*=\\"'s message: \\"]").forEach(label);
    const bots = document.querySelectorAll("#tqa-chat .message.bot");
    const last = bots[bots.length - 1];
    const link = last && last.querySelector("a[href^='answers/']");
    const id = link ? link.getAttribute("href") : "";
    if (id && id !== seen) for (const wait of [30, 300]) setTimeout(() => toTop(last), wait);
    seen = id;
  }).observe(document.documentElement, { childList: true, subtree: true, characterData: true });
})();
</script>"""
COPY_JS = "async (text) => { if (text) await navigator.clipboard.writeText(text); }"
# once the question box opens, the cursor goes to it, unless the user has already gone elsewhere on the page
FOCUS_JS = """() => { let tries = 0; const focus = () => {
  const box = document.querySelector("#tqa-question textarea");
  if (!box || (document.activeElement && document.activeElement !== document.body)) return;
  if (box.disabled) { if (tries++ < 40) setTimeout(focus, 50); return; }  // the page shows the open box soon
  box.focus(); }; focus(); }"""


def theme() -> gr.themes.Base:
    """The default look with system fonts: nothing is fetched from Google Fonts or any other site."""
    return gr.themes.Default(font=_THEME_FONTS, font_mono=_MONO_FONTS)


def status_text(engine: Engine, access: Access | None = None) -> str:
    status = engine.status(access)
    policy = engine.labels().policy
    line = (
        f"Mode: **{status.mode}** · {counted(status.documents, 'document')} · {counted(status.passages, 'passage')} · "
        f"index {escape_markdown(status.index_version)}"
        + (f" · need-to-know policy {policy.version[:12]}" if policy else "")  # the version citations name
    )
    return "\n\n".join([line, *(f"*{escape_markdown(notice)}*" for notice in status.notices)])


def build_ui(engine: Engine, settings: Settings, gate: Gate) -> gr.Blocks:
    """The chat page; `gate` bounds how many questions run and wait (shared with the JSON API)."""
    handlers = _Handlers(engine, settings, gate)
    with gr.Blocks(title="ThreatQA", analytics_enabled=False) as blocks:
        gr.Markdown("## ThreatQA: answers quoted from the threat assessments")
        # what a user may read is known per request: the status line and the document list fill in on load
        status = gr.Markdown("", elem_classes="tqa-status", latex_delimiters=[], elem_id="tqa-status")
        replies = gr.State([])  # answer ids of this session's replies (kept for API compatibility; not for binding)
        current = gr.State("")  # the answer whose passages "view in context" offers
        with gr.Row():
            with gr.Column(scale=3):
                chat = gr.Chatbot(
                    label="Answers", show_label=False, height=560, latex_delimiters=[], sanitize_html=True,
                    allow_tags=False, buttons=[], elem_id="tqa-chat", placeholder="Ask a question about the documents.",
                    autoscroll=False, layout="panel",
                )  # fmt: skip
                # closed until the page's load has filled the chat: a reply that came back first would be
                # overwritten by the (older) history, and vanish from the user's view
                question = gr.Textbox(
                    label="Your question", placeholder=LOADING_TEXT, lines=1,
                    elem_id="tqa-question", submit_btn="Ask", interactive=False,
                )  # fmt: skip
                hint = gr.Markdown("", elem_id="tqa-hint", latex_delimiters=[])
                copy = gr.Button("Copy answer", elem_id="tqa-copy", size="sm", variant="secondary", scale=0)
                copied = gr.Textbox(visible="hidden", elem_id="tqa-copy-text", label="Answer as text")
                gr.Examples([[q] for q in EXAMPLE_QUESTIONS], inputs=question, label="Example questions")
            with gr.Column(scale=2):
                only = gr.Dropdown(
                    [], multiselect=True, label="Search only these documents (empty: all)", elem_id="tqa-only"
                )
                with gr.Accordion("View in context", open=False, elem_id="tqa-context-panel") as panel:
                    pick = gr.Dropdown([], label="Passage (click a reply to choose its passages)", elem_id="tqa-pick")
                    context = gr.Markdown("Ask a question, then choose one of its passages.", latex_delimiters=[],
                                          elem_id="tqa-context", sanitize_html=True, max_height=480)  # fmt: skip
                    reference = gr.Textbox(label="Reference", buttons=["copy"], interactive=False, elem_id="tqa-ref")
        outputs = [chat, replies, current, pick, context, reference, question, hint, copied]
        question.submit(
            handlers.ask, [question, chat, replies, only], outputs, api_name="chat", api_visibility="undocumented",
        )  # fmt: skip
        chat.like(handlers.feedback, None, None, api_visibility="undocumented")
        chat.select(
            handlers.select_reply, None, [current, pick, context, reference, copied, panel],
            api_visibility="undocumented",
        )  # fmt: skip
        chat.clear(handlers.cleared, None, [replies, current, pick, context, reference, copied, hint])
        pick.input(
            handlers.view, [pick, current], [context, reference], api_name="context", api_visibility="undocumented"
        )
        copy.click(None, [copied], None, js=COPY_JS)
        blocks.load(handlers.history, None, [chat, status, only, question], api_visibility="undocumented").then(
            None, js=FOCUS_JS
        )
        gr.api(handlers.ask_json, api_name="ask")
    return blocks


Reply = str  # an answer id


class _Handlers:
    """Event handlers: parse, call the engine, format. Problems reach the user as gentle inline messages."""

    def __init__(self, engine: Engine, settings: Settings, gate: Gate) -> None:
        self.engine, self.settings, self.gate = engine, settings, gate

    def _answer(self, question: object, k: object, documents: object, request: gr.Request | None) -> Answer:
        """The engine's answer; the request is checked by the engine, as for the JSON API."""
        access = request_access(self.settings, request.headers if request else None)
        self.engine.check_request(question, k, documents or None, access=access)  # before waiting for a slot
        with self.gate.slot():
            return self.engine.ask(question, k, documents or None, channel="ui", access=access)  # type: ignore[arg-type]

    def ask(
        self, question: str, history: list[dict[str, Any]], replies: list[Reply], documents: list[str] | None,
        request: gr.Request,
    ) -> tuple[Any, ...]:  # fmt: skip
        """Append the question and its reply to the chat; offer the reply's passages for "view in context".
        A question that cannot be asked (empty, too long, busy) leaves the chat as it is and says why
        below the question box."""
        try:
            answer = self._answer(question, None, documents, request)
        except QuestionError as exc:
            empty = not str(question or "").strip()
            return (*[gr.skip()] * 7, EMPTY_TEXT if empty else _sentence(str(exc)) + ".", gr.skip())
        except AuditError as exc:  # its message names the log's file: for the server log, not for users
            _log.error("audit log write failed: %s", exc)
            return (*[gr.skip()] * 7, UNRECORDED_TEXT, gr.skip())
        except ThreatQAError as exc:  # includes Busy; messages are written for users
            return (*[gr.skip()] * 7, _sentence(str(exc)), gr.skip())
        history = [
            *(history or [])[-MAX_HISTORY:],  # the client sends the history: a forged, huge one is cut
            {"role": "user", "content": escape_markdown(str(question))},
            {"role": "assistant", "content": format_answer(answer, filtered=bool(documents))},
        ]
        replies = [*(replies or [])[-MAX_HISTORY:], answer.id]
        offered = self._offer(answer)
        return history, replies, answer.id, *offered, "", "", plain_text(answer, self._permalink(answer.id))

    def ask_json(self, question: str, k: int = 5, documents: list[str] | None = None,
                 request: gr.Request = None) -> dict[str, Any]:  # type: ignore[assignment]  # fmt: skip
        """Answer a question: the same object as `threatqa ask --json` (gradio_client api_name "/ask")."""
        try:
            return self._answer(question, k, documents, request).to_json()
        except AuditError as exc:
            _log.error("audit log write failed: %s", exc)
            raise gr.Error(UNRECORDED_TEXT) from None
        except ThreatQAError as exc:
            raise gr.Error(_sentence(str(exc))) from None

    def _permalink(self, answer_id: str | None) -> str | None:
        return f"{self.settings.root_path}/answers/{answer_id}" if answer_id else None

    def _logged(self, answer_id: str, request: gr.Request | None) -> Answer | None:
        """The answer as the audit log holds it, if the requester may read what it cites (Engine.logged_answer)."""
        found = self.engine.logged_answer(
            answer_id, request_access(self.settings, request.headers if request else None)
        )
        return found[0] if found else None

    def _offer(self, answer: Answer) -> tuple[Any, str, str]:
        if not answer.passages:
            return gr.Dropdown(choices=[], value=None), "This reply quotes no passage.", ""
        choices = [(f"[{p.rank}] {p.citation.title}, {p.citation.location()}", p.rank) for p in answer.passages]
        return (gr.Dropdown(choices=choices, value=1), *self._context(answer, 1))

    def _context(self, answer: Answer, rank: int) -> tuple[str, str]:
        passage = next((p for p in answer.passages if p.rank == rank), None)
        if passage is None:
            return "Choose a passage.", ""
        cite = passage.citation
        try:
            document = self.engine.index.document(cite.document_id)
        except KeyError:
            return "The document of this passage is no longer indexed.", passage.reference()
        body = format_context(document.text, cite.start, cite.end)
        return f"{context_heading(passage)}\n\n{quote_block(body)}", passage.reference()

    def view(self, pick: int | None, current: str, request: gr.Request) -> tuple[str, str]:
        """Show the chosen passage of the current reply inside its document."""
        answer = self._logged(current, request) if current else None
        if answer is None or pick is None:
            return "Choose a passage.", ""
        return self._context(answer, int(pick))

    def select_reply(self, event: gr.SelectData, request: gr.Request) -> tuple[Any, ...]:
        """Clicking a reply offers its passages in "view in context" and makes it the one "copy answer" copies."""
        ids = answer_links(event.value)
        answer = self._logged(ids[0], request) if ids else None
        if answer is None:
            return "", gr.Dropdown(choices=[], value=None), "Choose a reply.", "", "", gr.skip()
        return answer.id, *self._offer(answer), plain_text(answer, self._permalink(answer.id)), gr.Accordion(open=True)

    def cleared(self) -> tuple[Any, ...]:
        """After the chat's Clear: nothing is offered from the replies that went."""
        waiting = "Ask a question, then choose one of its passages."
        return [], "", gr.Dropdown(choices=[], value=None), waiting, "", "", ""

    def feedback(self, event: gr.LikeData, request: gr.Request) -> None:
        """Thumbs up/down on a reply, stored in the audit log against the answer that reply shows."""
        ids = answer_links(event.value)
        if event.liked not in (True, False) or not ids or self._logged(ids[0], request) is None:
            return
        try:
            self.engine.feedback(
                ids[0], bool(event.liked), user=request_user(self.settings, request.headers if request else None)
            )
        except AuditError as exc:
            _log.error("audit log write failed: %s", exc)
            raise gr.Error(UNRECORDED_TEXT) from None

    def history(self, request: gr.Request) -> tuple[Any, ...]:
        """When the page loads: the user's previous questions and replies (from the audit log), the status
        line, the documents they may search, and the question box, open now that the chat is filled."""
        access = request_access(self.settings, request.headers if request else None)
        choices = [(f"{d.title} ({d.path})", d.id) for d in self.engine.documents(access)]
        try:
            messages = history_messages(self.engine.audit, access.user, MAX_HISTORY // 2)
        except AuditError:  # no log yet, or unreadable: an empty chat
            messages = []
        opened = gr.Textbox(interactive=True, placeholder=QUESTION_TEXT)
        return messages, status_text(self.engine, access), gr.Dropdown(choices=choices), opened


def _sentence(message: str) -> str:
    return message[:1].upper() + message[1:]
