"""Plain HTML pages for one logged answer: its permalink and each passage in context.

Served by the API (`/answers/<id>`, `/answers/<id>/passages/<n>`) from the audit record, so a
link shows exactly what was answered then; each citation carries its verify status now. Every
piece of document text is escaped with `html.escape`; the pages load nothing from other sites and
link only to this server, by relative paths (so they work under a proxy's path prefix).
"""

from __future__ import annotations

from dataclasses import dataclass
from html import escape
from urllib.parse import quote

from threatqa.answer import ABSTAIN_TEXT, NEAREST_TEXT, Answer, Citation, Passage, best_sentence, lead, match_words
from threatqa.chunking import Span
from threatqa.ui_format import context_bounds, dated

PAGE_CONTEXT_CHARS = 3000  # text shown on each side of a passage on its context page

STYLE = """
:root { color-scheme: light; --ink: #1f2937; --muted: #4b5563; --line: #d1d5db; --accent: #1d4ed8; }
* { box-sizing: border-box; }
body { font: 16px/1.55 system-ui, -apple-system, "Segoe UI", Roboto, Arial, sans-serif; color: var(--ink);
       margin: 0; background: #f9fafb; }
main { max-width: 860px; margin: 0 auto; padding: 24px 20px 48px; background: #fff; min-height: 100vh; }
h1 { font-size: 1.45rem; line-height: 1.3; margin: 0.2em 0 0.4em; }
h2 { font-size: 1.1rem; margin: 1.6em 0 0.4em; }
a { color: var(--accent); }
.meta, .cite { color: var(--muted); font-size: 0.92rem; }
.actions { display: flex; flex-wrap: wrap; gap: 8px; margin: 12px 0 4px; }
.actions a, .actions button { font: inherit; font-size: 0.92rem; padding: 6px 12px; border: 1px solid var(--line);
       border-radius: 6px; background: #fff; color: var(--accent); text-decoration: none; cursor: pointer; }
blockquote { margin: 8px 0; padding: 8px 14px; border-left: 4px solid var(--line); background: #f9fafb;
       white-space: pre-wrap; overflow-wrap: anywhere; }
.lead blockquote { border-left-color: var(--accent); background: #eff6ff; }
mark { background: #fde68a; color: var(--ink); padding: 0 1px; }
#passage { scroll-margin-top: 30vh; }  /* the fragment #passage leaves the lines before it in view */
.passage { border-top: 1px solid var(--line); padding-top: 8px; }
.status { display: inline-block; padding: 1px 8px; border-radius: 10px; font-size: 0.85rem; font-weight: 600; }
.holds { background: #dcfce7; color: #14532d; }
.changed { background: #fee2e2; color: #7f1d1d; }
ul.sources { margin: 4px 0 8px; padding-left: 20px; }
.context { white-space: pre-wrap; overflow-wrap: anywhere; }
.abstain { font-weight: 700; }
.handling { color: var(--ink); font-weight: 600; white-space: nowrap; }
#copied { color: #14532d; font-size: 0.92rem; }
"""
COPY_SCRIPT = """<script>
document.getElementById("copy").addEventListener("click", async () => {
  await navigator.clipboard.writeText(document.getElementById("answer-text").value);
  document.getElementById("copied").textContent = "Copied";
});
</script>"""


@dataclass(frozen=True)
class Check:
    """A citation's verify status now: `ok`, and a short phrase for the reader."""

    ok: bool
    status: str
    detail: str


def page(title: str, body: str, script: str = "") -> str:
    return (
        f'<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
        f'<meta name="viewport" content="width=device-width, initial-scale=1">'
        f"<title>{escape(title)}</title><style>{STYLE}</style></head>"
        f"<body><main>{body}</main>{script}</body></html>"
    )


def _text(text: str, span: Span | None = None, mark_id: str = "") -> str:
    """Escaped text with `span` marked."""
    if span is None or span.start >= span.end:
        return escape(text)
    ident = f' id="{mark_id}"' if mark_id else ""
    return (
        escape(text[: span.start])
        + f"<mark{ident}>{escape(text[span.start : span.end])}</mark>"
        + escape(text[span.end :])
    )


def _file_href(cite: Citation, up: str) -> str:
    page_anchor = f"#page={cite.page}" if cite.page is not None and cite.source.lower().endswith(".pdf") else ""
    return f"{up}api/documents/{quote(cite.document_id, safe='')}/file{page_anchor}"


def _check_badge(check: Check | None) -> str:
    if check is None:
        return ""
    css = "holds" if check.ok else "changed"
    label = "verified: still in the document as cited" if check.ok else f"changed: {check.status.replace('_', ' ')}"
    title = f' title="{escape(check.detail)}"' if check.detail else ""
    return f'<span class="status {css}"{title}>{escape(label)}</span>'


def _handling(cite: Citation) -> str:
    """Who may read the cited document (need-to-know label), where an analyst reads the reference."""
    if not cite.handling:
        return ""
    return f' · <span class="handling">handling: {escape(cite.handling)}</span>'


def _source_item(cite: Citation, check: Check | None, up: str) -> str:
    return (
        f"<li>{escape(cite.title)} · {escape(dated(cite.date, cite.date_source))} · {escape(cite.location())} · "
        f'<a href="{escape(_file_href(cite, up))}">{escape(cite.source)}</a>{_handling(cite)} '
        f"{_check_badge(check)}</li>"
    )


def _passage_html(passage: Passage, answer: Answer, checks: dict[tuple[str, int, int], Check]) -> str:
    top = answer.passages[0].score if answer.passages else 0.0
    strength = match_words(passage, top) if answer.answered else "nearest, may not answer"
    shown = passage.shown
    sources = "".join(
        _source_item(cite, checks.get((cite.source, cite.start, cite.end)), "../") for cite in passage.sources
    )
    heading = "Found in" if len(passage.sources) == 1 else f"The same text is in {len(passage.sources)} files"
    return (
        f'<section class="passage" id="p{passage.rank}"><h2>[{passage.rank}] {escape(passage.citation.title)}</h2>'
        f'<p class="cite">{escape(strength)} · <a href="{answer.id}/passages/{passage.rank}#passage">'
        f"view in context</a></p>"
        f"<blockquote>{_text(shown, best_sentence(answer.question, shown))}</blockquote>"
        f'<p class="cite">{heading}:</p><ul class="sources">{sources}</ul></section>'
    )


def answer_page(
    answer: Answer, when: str, user: str | None, checks: dict[tuple[str, int, int], Check], text: str
) -> str:
    """The permalink page: the question, the lead, every passage with its sources and verify status,
    copy and export."""
    who = f" · asked by {escape(user)}" if user else ""
    policy = f" · policy {escape(answer.policy_version[:12])}" if answer.policy_version else ""
    parts = [
        '<p class="meta"><a href="../">← ThreatQA</a></p>',
        f"<h1>{escape(answer.question)}</h1>",
        f'<p class="meta">Answered {escape(when)}{who} · index {escape(answer.index_version)}{policy} · '
        f"answer {escape(answer.id or '')}</p>",
        '<div class="actions"><button id="copy" type="button">Copy answer</button>'
        f'<a href="{answer.id}.md">Export Markdown</a><a href="{answer.id}.json">Export JSON</a>'
        '<span id="copied" role="status"></span></div>',
        f'<textarea id="answer-text" hidden readonly aria-label="Answer as text">{escape(text)}</textarea>',
    ]
    if answer.answered:
        quotes = "".join(
            f'<blockquote>“{escape(item.text)}” <a href="#p{item.rank}">[{item.rank}]</a></blockquote>'
            for item in lead(answer)
        )
        parts.append(f'<section class="lead" aria-label="Answer"><h2>In the documents\' words</h2>{quotes}</section>')
    else:
        parts.append(f'<p class="abstain">{escape(ABSTAIN_TEXT)}</p>')
        if answer.passages:
            parts.append(f"<p>{escape(NEAREST_TEXT)}</p>")
    parts += [_passage_html(passage, answer, checks) for passage in answer.passages]
    searched = ", ".join(answer.searched) or "none"
    parts.append(f'<p class="meta">Documents searched: {escape(searched)}</p>')
    return page(f"ThreatQA: {answer.question}", "".join(parts), COPY_SCRIPT)


def context_page(answer: Answer, passage: Passage, document_text: str) -> str:
    """One passage inside its document: the exact span marked and scrolled into view."""
    cite = passage.citation
    first, last = context_bounds(document_text, cite.start, cite.end, PAGE_CONTEXT_CHARS)
    body = _text(document_text[first:last], Span(cite.start - first, cite.end - first), "passage")
    before = "…\n\n" if first > 0 else ""
    after = "\n\n…" if last < len(document_text) else ""
    parts = [
        f'<p class="meta"><a href="../../{answer.id}">← the answer</a> · <a href="../../../">ThreatQA</a></p>',
        f"<h1>[{passage.rank}] {escape(cite.title)}</h1>",
        f'<p class="cite">{escape(cite.source)} · {escape(dated(cite.date, cite.date_source))} · '
        f"{escape(cite.location())}, lines {cite.line_start}–{cite.line_end}, characters {cite.start}–{cite.end}"
        f'{_handling(cite)} · <a href="{escape(_file_href(cite, "../../../"))}">original file</a></p>',
        f'<p class="meta">Question: {escape(answer.question)}</p>',
        f'<div class="context">{escape(before)}{body}{escape(after)}</div>',
    ]
    script = '<script>document.getElementById("passage").scrollIntoView({block: "start"});</script>'
    return page(f"[{passage.rank}] {cite.title}: in context", "".join(parts), script)
