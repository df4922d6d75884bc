"""Issue 14 in a real browser: answers an analyst reads at a glance, citations a reviewer can follow.

The served folder holds the shipped corpus and one report in five formats (txt, md, html, pdf,
docx: tests/formats.py), as a realistic folder does. Screenshots at 1440x900 and 390x844 go to
tests/output/ (a reply, an abstention, a passage in context, the permalink page).
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from browser_support import AXE, DESKTOP, OUTPUT, PHONE, ask, launch, need_chromium, replies, serving, wait_for_replies
from conftest import report_docs
from threatqa.audit import AuditLog

pytestmark = pytest.mark.browser

COCAINE = "How much cocaine is consumed in the United Kingdom every year?"
PEOPLE = "How many people are involved in serious organised crime in the UK?"
STATES = "Which hostile states use cybercriminals or organised crime groups?"
UNANSWERABLE = "What is the recipe for banana bread?"
REPORT_FILES = [f"assessment.{suffix}" for suffix in ("docx", "html", "md", "pdf", "txt")]


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, Path]]:
    """The server's URL and its audit log's path."""
    need_chromium()
    root = tmp_path_factory.mktemp("answers")
    docs = report_docs(root)
    # the portal names each user (auth=header): every test is its own user, with its own history
    with serving(root, docs, {"THREATQA_AUTH": "header", "THREATQA_AUTH_HEADER": "X-Forwarded-User"}) as url:
        yield url, root / "audit.sqlite3"


@pytest.fixture(scope="module")
def browser(served: tuple[str, Path]) -> Iterator[Any]:
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        browser = launch(playwright)
        yield browser
        browser.close()


@pytest.fixture()
def page(browser: Any, served: tuple[str, Path], request: pytest.FixtureRequest) -> Iterator[Any]:
    """A fresh browser context (its own session and user) on the chat page, at desktop size."""
    from playwright.sync_api import expect

    user = request.node.name.removeprefix("test_")[:40]
    context = browser.new_context(viewport=DESKTOP, extra_http_headers={"X-Forwarded-User": user})
    context.grant_permissions(["clipboard-read", "clipboard-write"], origin=served[0])
    page = context.new_page()
    page.goto(served[0] + "/")
    expect(page.get_by_label("Your question")).to_be_editable()  # the page's load is done: the chat is filled
    yield page
    context.close()


def _answer_id(reply: Any) -> str:
    href = reply.get_by_role("link", name="Permalink").get_attribute("href")
    return href.rsplit("/", 1)[-1]


SCROLL_LAST_REPLY = """() => {
  const replies = document.querySelectorAll("#tqa-chat .message.bot");
  const last = replies[replies.length - 1];
  let box = last && last.parentElement;
  while (box && box !== document.body && !(box.scrollHeight > box.clientHeight &&
         ["auto", "scroll"].includes(getComputedStyle(box).overflowY))) box = box.parentElement;
  if (!box || box === document.body) return;
  box.scrollTop += last.getBoundingClientRect().top - box.getBoundingClientRect().top - 8;
}"""


def _opens_tab(page: Any, link: Any) -> Any:
    """The tab a link with target=_blank opens (found among the context's pages: the link is noopener)."""
    before = list(page.context.pages)
    link.click()
    for _ in range(100):
        new = [p for p in page.context.pages if p not in before]
        if new:
            return new[0]
        page.wait_for_timeout(100)
    raise AssertionError(f"{link} opened no tab")


def _shot(page: Any, name: str, fresh: bool = False) -> None:
    """Screenshots at desktop and phone size; `fresh`: the page is opened anew at each size (as a
    reader would open it, so that its own scrolling runs at that size)."""
    OUTPUT.mkdir(exist_ok=True)
    if fresh:
        for size, viewport in (("desktop", DESKTOP), ("phone", PHONE)):
            opened = page.context.new_page()
            opened.set_viewport_size(viewport)
            opened.goto(page.url)
            opened.wait_for_timeout(300)
            opened.screenshot(path=str(OUTPUT / f"{name}-{size}.png"))
            opened.close()
        return
    for size, viewport in (("desktop", DESKTOP), ("phone", PHONE)):
        page.set_viewport_size(viewport)
        page.wait_for_timeout(300)
        page.evaluate(SCROLL_LAST_REPLY)  # as the page does for a new reply, at this size
        page.wait_for_timeout(100)
        page.screenshot(path=str(OUTPUT / f"{name}-{size}.png"))
    page.set_viewport_size(DESKTOP)


def test_clear_then_feedback_lands_on_the_answer_shown(page: Any, served: tuple[str, Path]) -> None:
    from playwright.sync_api import expect

    ask(page, COCAINE)
    first = _answer_id(wait_for_replies(page, 1))
    ask(page, STATES)
    wait_for_replies(page, 2)
    page.locator("#tqa-chat").get_by_role("button", name="Clear").click()
    expect(replies(page)).to_have_count(0)
    ask(page, PEOPLE)
    reply = wait_for_replies(page, 1)
    third = _answer_id(reply)
    assert third != first
    reply.hover()
    page.locator("#tqa-chat").get_by_role("button", name="Dislike").last.click()
    log = AuditLog(served[1])
    for _ in range(50):
        feedback = [r for r in log.records() if r.kind == "feedback"]
        if feedback:
            break
        page.wait_for_timeout(100)
    assert [r.payload for r in feedback][-1:] == [{"answer_id": third, "helpful": False}]
    assert log.get(third).question == PEOPLE
    # "view in context" of the reply clicked shows that reply's passage, not the first question's
    reply.locator("blockquote").last.click()
    context = page.locator("#tqa-context")
    expect(context).to_contain_text("characters", timeout=10_000)
    logged = log.get(third).payload["passages"][0]
    expect(page.locator("#tqa-ref textarea")).to_have_value(logged["reference"])


def test_reply_opens_at_its_top_with_the_answer_first(page: Any) -> None:
    ask(page, PEOPLE)
    wait_for_replies(page, 1)
    ask(page, COCAINE)
    reply = wait_for_replies(page, 2)
    page.wait_for_timeout(500)  # the scroll runs after the reply is rendered
    top = reply.evaluate(
        """(el) => { let box = el.parentElement;
            while (box && !(box.scrollHeight > box.clientHeight && getComputedStyle(box).overflowY !== 'visible'))
              box = box.parentElement;
            return [el.getBoundingClientRect().top, box.getBoundingClientRect().top, box.scrollTop]; }"""
    )
    reply_top, box_top, scrolled = top
    assert scrolled > 0 and 0 <= reply_top - box_top <= 40, top
    first_line = reply.inner_text().strip().splitlines()[0]
    assert first_line == "In the documents' words:"
    _shot(page, "reply")


def test_copies_of_one_report_are_one_passage_with_all_sources(page: Any) -> None:
    ask(page, COCAINE)
    reply = wait_for_replies(page, 1)
    text = reply.inner_text()
    assert text.count("Around 117 tonnes of cocaine") == 2  # once in the lead, once as the passage
    assert "Same text in 5 files" in text
    sources = reply.locator("p", has_text="Same text in 5 files").first
    for name in REPORT_FILES:
        assert name in sources.inner_text()
    citations = [line for line in text.splitlines() if line.startswith("[") and " · " in line]
    assert [line.split("]")[0] + "]" for line in citations] == ["[1]", "[2]", "[3]", "[4]", "[5]"]
    pdf = sources.get_by_role("link", name="assessment.pdf", exact=False)
    assert pdf.get_attribute("href").endswith("/file#page=1") or "#page=" in pdf.get_attribute("href")


def test_citation_click_scrolls_the_marked_span_into_view(page: Any) -> None:
    ask(page, STATES)
    reply = wait_for_replies(page, 1)
    context = _opens_tab(page, reply.get_by_role("link", name="[1]", exact=True).first)
    context.set_viewport_size(PHONE)
    context.wait_for_load_state()
    context.locator("#passage").wait_for()
    box = context.evaluate(
        "() => { const r = document.getElementById('passage').getBoundingClientRect();"
        " return [r.top, r.bottom, innerHeight, scrollY]; }"
    )
    top, bottom, height, _scrolled = box
    assert top < height and bottom > 0, box  # the marked span is on screen
    assert context.locator("mark#passage").count() == 1
    assert "Hostile states" in context.locator("mark#passage").inner_text() or "hostile" in context.content()
    _shot(context, "context", fresh=True)
    with context.expect_response(lambda response: "/file" in response.url) as response:
        context.get_by_role("link", name="original file").click()
    assert response.value.ok and "/api/documents/" in response.value.url


def test_permalink_re_renders_the_answer_with_verify_status(page: Any, served: tuple[str, Path]) -> None:
    ask(page, COCAINE)
    reply = wait_for_replies(page, 1)
    answer_id = _answer_id(reply)
    permalink = page.context.new_page()
    permalink.goto(f"{served[0]}/answers/{answer_id}")
    assert permalink.locator("h1").inner_text() == COCAINE
    assert "Around 117 tonnes of cocaine" in permalink.locator(".lead").inner_text()
    badges = permalink.locator(".status")
    assert badges.count() >= 9  # every source of every passage (five files for the report's passages)
    assert all(text.startswith("verified") for text in badges.all_inner_texts())
    markdown = permalink.request.get(f"{served[0]}/answers/{answer_id}.md").text()
    assert markdown.startswith(f"# {COCAINE}\n") and "(assessment.pdf)" in markdown
    exported = json.loads(permalink.request.get(f"{served[0]}/answers/{answer_id}.json").text())
    assert exported["id"] == answer_id and len(exported["passages"]) == 5
    assert {c["source"] for c in exported["passages"][0]["also_in"]} | {exported["passages"][0]["source"]} >= set(
        REPORT_FILES
    )
    _shot(permalink, "permalink", fresh=True)
    permalink.close()


def test_copy_answer_gives_clean_text(page: Any) -> None:
    ask(page, PEOPLE)
    wait_for_replies(page, 1)
    page.get_by_role("button", name="Copy answer").click()
    page.wait_for_timeout(300)
    copied = page.evaluate("navigator.clipboard.readText()")
    assert copied.startswith(f"Q: {PEOPLE}\n")
    assert "59,000 people" in copied
    for markup in ("\\-", "\\,", "<mark>", "**", "&lt;"):
        assert markup not in copied, markup
    assert "\n    NCA annual assessment speech 2023-07-17, 2023-07-17, para" in copied
    assert "Permalink: /answers/" in copied


def test_history_survives_a_reload(page: Any) -> None:
    from playwright.sync_api import expect

    question = "Which drugs are most consumed in the UK?"
    ask(page, question)
    answer_id = _answer_id(wait_for_replies(page, 1))
    page.reload()
    expect(page.locator("#tqa-chat .message.user").filter(has_text=question).last).to_be_visible(timeout=15_000)
    assert replies(page).last.get_by_role("link", name="Permalink").get_attribute("href").endswith(answer_id)


def test_abstention_says_so_plainly(page: Any) -> None:
    ask(page, UNANSWERABLE)
    reply = wait_for_replies(page, 1)
    lines = reply.inner_text().strip().splitlines()
    assert lines[0] == "No passage in the documents answers this closely enough."
    assert "Nearest passages, which may not answer it:" in lines[1:4]
    assert "Documents searched:" in reply.inner_text()
    _shot(page, "abstention")


def test_empty_question_gets_a_gentle_inline_message(page: Any) -> None:
    from playwright.sync_api import expect

    ask(page, "   ")
    expect(page.locator("#tqa-hint")).to_contain_text("Type a question first")
    assert page.locator(".toast-body, .error").count() == 0
    assert replies(page).count() == 0


def test_page_is_accessible(page: Any, served: tuple[str, Path]) -> None:
    if not AXE.exists():
        pytest.skip(f"{AXE} is missing: run `make axe` (CI does)")
    from playwright.sync_api import expect

    expect(page.get_by_label("Your question")).to_be_focused()  # the question box has the focus once it opens
    assert page.get_by_role("button", name="Ask").count() == 1
    ask(page, PEOPLE)
    reply = wait_for_replies(page, 1)
    label = reply.locator("[aria-label]").first.get_attribute("aria-label")
    assert label.startswith("Answer: In the documents' words:") and "\\" not in label
    problems = _axe(page)
    assert problems == [], json.dumps(problems, indent=1)
    for path in (f"answers/{_answer_id(reply)}", f"answers/{_answer_id(reply)}/passages/1"):
        other = page.context.new_page()
        other.goto(f"{served[0]}/{path}")
        problems = _axe(other)
        assert problems == [], json.dumps(problems, indent=1)


def _axe(page: Any) -> list[dict[str, Any]]:
    """axe-core's serious and critical violations on the page (WCAG 2.x A and AA rules)."""
    page.add_script_tag(path=str(AXE))
    found = page.evaluate(
        """async () => (await axe.run(document, {runOnly: {type: 'tag', values:
             ['wcag2a', 'wcag2aa', 'wcag21a', 'wcag21aa', 'best-practice']}})).violations"""
    )
    return [
        {
            "id": v["id"],
            "impact": v["impact"],
            "nodes": [(n["target"], n["html"][:160], n.get("failureSummary")) for n in v["nodes"]][:5],
        }
        for v in found
        if v["impact"] in ("serious", "critical")
    ]
