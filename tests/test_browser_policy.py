"""Need-to-know in a real browser (issue 16): two analysts behind the portal's proxy (auth=header,
groups in X-Forwarded-Groups) use the chat page of a real server, and neither learns anything of the
other's document, neither on the page (its HTML) nor in any response the page received.

Each walks the page: the status line, the document filter, a question answered from their own
document (its reply shows the handling label), a question whose answer is only in the other's
document, view in context, the reply's permalink and context page, the history after a reload, and
the other's answer's permalink, exports and file, which are not found. Screenshots of red's reply
with its handling label, at 1440x900 and 390x844, go to tests/output/policy-reply-*.png.
"""

from __future__ import annotations

import json
import time
import urllib.request
from collections.abc import Iterator
from typing import Any

import pytest

from browser_support import DESKTOP, OUTPUT, PHONE, ask, launch, need_chromium, replies, serving, wait_for_replies
from threatqa.policy import POLICY_FILE

pytestmark = pytest.mark.browser

DOCUMENTS = {
    "red/scarlet-harbour.txt": "Operation Scarlet: the red team tracked cocaine couriers through Felixstowe docks in "
    "2023. Scarlet analysts counted 38 couriers using refrigerated lorries.\n",
    "blue/azure-estuary.txt": "Operation Azure: the blue team tracked heroin shipments through Southampton docks in "
    "2023. Azure analysts counted 412 kilograms of heroin seized at Southampton in March.\n",
    "public/ports-note.txt": "Public note: drug couriers use container ports, the agency says.\n",
}
POLICY = '[[rule]]\npaths = ["red/*"]\ngroups = ["red"]\n\n[[rule]]\npaths = ["blue/*"]\ngroups = ["blue"]\n\n' \
    '[[rule]]\npaths = ["public/*"]\ngroups = ["open"]\n'  # fmt: skip
OWN_QUESTION = {"red": "Which team tracked cocaine couriers through Felixstowe docks?",
                "blue": "Which team tracked heroin shipments through Southampton docks?"}  # fmt: skip
# answered, for each team, only by the other team's document (and in no words of SECRETS: a user's own
# question is no leak)
OTHER_QUESTION = {"red": "How many kilograms of heroin were seized in March?",
                  "blue": "How many couriers used refrigerated lorries?"}  # fmt: skip
# what the other team's document would give away: its path, title and distinctive words
SECRETS = {
    "red": ("red/scarlet-harbour.txt", "Scarlet harbour", "Scarlet", "Felixstowe", "38 couriers"),
    "blue": ("blue/azure-estuary.txt", "Azure estuary", "Azure", "Southampton", "412 kilograms"),
}
OWN_PATH = {"red": "red/scarlet-harbour.txt", "blue": "blue/azure-estuary.txt"}
TEXT_TYPES = ("text/", "application/json", "application/javascript", "event-stream")
STREAM = "/gradio_api/queue/data"  # the chat's replies come over this event stream


def _headers(team: str) -> dict[str, str]:
    return {"X-Forwarded-User": f"{team}-analyst", "X-Forwarded-Groups": team}


def _other(team: str) -> str:
    return "blue" if team == "red" else "red"


def _secrets_of(team: str, ids: dict[str, str]) -> tuple[str, ...]:
    """Everything that names or quotes `team`'s document, its id included."""
    return (*SECRETS[team], ids[team])


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    need_chromium()
    root = tmp_path_factory.mktemp("policy")
    docs = root / "docs"
    for path, text in DOCUMENTS.items():
        (docs / path).parent.mkdir(parents=True, exist_ok=True)
        (docs / path).write_text(text, encoding="utf-8")
    (root / POLICY_FILE).write_text(POLICY, encoding="utf-8")  # beside the docs folder: the server finds it
    with serving(root, docs, {"THREATQA_AUTH": "header", "THREATQA_AUTH_HEADER": "X-Forwarded-User"}) as url:
        yield url


def _get_json(url: str, headers: dict[str, str], body: dict[str, Any] | None = None) -> Any:
    data = json.dumps(body).encode() if body is not None else None
    request = urllib.request.Request(url, data, headers | {"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=60) as response:
        return json.loads(response.read())


@pytest.fixture(scope="module")
def document_ids(served: str) -> dict[str, str]:
    """Each team's document id, as that team's own /api/documents lists it."""
    ids = {}
    for team in ("red", "blue"):
        listed = _get_json(f"{served}/api/documents", _headers(team))
        ids[team] = next(d["id"] for d in listed if d["path"] == OWN_PATH[team])
    return ids


@pytest.fixture(scope="module")
def browser(served: str) -> Iterator[Any]:
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        browser = launch(playwright)
        yield browser
        browser.close()


class Seen:
    """Every text response a browser context received in full, and the HTML of each page it showed."""

    def __init__(self) -> None:
        self.finished: list[Any] = []
        self.bodies: list[tuple[str, str]] = []
        self.pages: list[tuple[str, str]] = []
        self.streams = [0, 0]  # the chat's event streams asked for, and read whole

    def record(self, page: Any) -> Any:
        # a response whose body has all arrived; the chat's event streams are read on their way to the page:
        # read back from the browser, only 1-3 of a team's 6 came with a body (the others ended let go of by
        # the page, or after its last read), and CI once found none of the replies
        page.on("requestfinished", lambda request: self.finished.append(request))
        page.on("request", lambda request: self._count(request))
        page.route(f"**{STREAM}**", self._stream)
        return page

    def _count(self, request: Any) -> None:
        if STREAM in request.url:
            self.streams[0] += 1

    def _stream(self, route: Any) -> None:
        response = route.fetch()  # the whole stream, as the server sent it (it closes once its events are sent)
        self.bodies.append((route.request.url, response.text()))
        self.streams[1] += 1
        route.fulfill(response=response)

    def settle(self, page: Any, seconds: float = 60.0) -> str:
        """Waits until every event stream of the chat has been read whole, then keeps the page (`keep`)."""
        deadline = time.monotonic() + seconds
        while self.streams[0] > self.streams[1] and time.monotonic() < deadline:
            page.wait_for_timeout(100)
        assert self.streams[0] == self.streams[1], f"the chat's event stream did not close in {seconds:.0f} s"
        return self.keep(page)

    def keep(self, page: Any) -> str:
        """The page's HTML now, kept with the bodies of the responses received so far (read before the
        page closes, after which its bodies are gone); the event streams' are kept as they arrive."""
        html = page.content()
        self.pages.append((page.url, html))
        for request in self.finished:
            response = request.response()
            kind = response.headers.get("content-type", "") if response else ""
            if STREAM not in request.url and any(t in kind for t in TEXT_TYPES) and not 300 <= response.status < 400:
                self.bodies.append((response.url, response.body().decode("utf-8", "replace")))
        self.finished = []
        return html


def _leaks(texts: list[tuple[str, str]], secrets: tuple[str, ...]) -> list[tuple[str, str]]:
    return [(where, secret) for where, text in texts for secret in secrets if secret.casefold() in text.casefold()]


def _answer_id(reply: Any) -> str:
    return reply.get_by_role("link", name="Permalink").get_attribute("href").rsplit("/", 1)[-1]


def _shot(page: Any, name: str) -> None:
    """The last reply at desktop and phone width, scrolled to its citation line."""
    OUTPUT.mkdir(exist_ok=True)
    for size, viewport in (("desktop", DESKTOP), ("phone", PHONE)):
        page.set_viewport_size(viewport)
        page.wait_for_timeout(300)
        replies(page).last.get_by_text("handling:").first.scroll_into_view_if_needed()
        page.wait_for_timeout(100)
        page.screenshot(path=str(OUTPUT / f"{name}-{size}.png"))
    page.set_viewport_size(DESKTOP)


@pytest.mark.parametrize("team", ["red", "blue"])
def test_each_analyst_sees_nothing_of_the_others_document(
    browser: Any, served: str, document_ids: dict[str, str], team: str
) -> None:
    from playwright.sync_api import expect

    other, seen = _other(team), Seen()
    context = browser.new_context(viewport=DESKTOP, extra_http_headers=_headers(team))
    page = seen.record(context.new_page())
    page.goto(served + "/")
    status = page.locator("#tqa-status")
    expect(status).to_contain_text("2 documents", timeout=60_000)  # own and the open one, of three
    expect(status).to_contain_text("need-to-know policy")

    # the document filter offers the readable documents only
    page.locator("#tqa-only input").click()
    options = page.get_by_role("option")
    expect(options).to_have_count(2)
    paths = {text.rsplit(" (", 1)[-1].rstrip(")") for text in options.all_inner_texts()}
    assert paths == {OWN_PATH[team], "public/ports-note.txt"}
    page.keyboard.press("Escape")

    # a question answered from their own document: the reply says who may read what it quotes
    ask(page, OWN_QUESTION[team])
    own = wait_for_replies(page, 1)
    expect(own).to_contain_text(f"handling: {team}")
    assert SECRETS[team][3] in own.inner_text()  # their own document does answer
    seen.settle(page)  # the reply's event stream, read before the page moves on
    if team == "red":
        _shot(page, "policy-reply")

    # a question only the other's document answers: nothing of it, nor its name among those searched
    ask(page, OTHER_QUESTION[team])
    theirs = wait_for_replies(page, 2)
    text = theirs.inner_text()
    assert text.startswith("No passage in the documents answers this closely enough.")  # as if it did not exist
    searched = text.split("Documents searched:")[1].splitlines()[0]
    assert {name.strip() for name in searched.split(",")} == {OWN_PATH[team], "public/ports-note.txt"}
    seen.settle(page)
    answer_ids = [_answer_id(own), _answer_id(theirs)]

    # view in context of each reply, in the side panel and on the context page; the permalink and exports
    for reply in (own, theirs):
        reply.locator("blockquote").last.click()
        expect(page.locator("#tqa-context")).to_contain_text("characters", timeout=10_000)
        seen.keep(page)
    for answer_id in answer_ids:
        opened = seen.record(context.new_page())
        assert opened.goto(f"{served}/answers/{answer_id}").ok
        permalink = seen.keep(opened)
        if answer_id == answer_ids[0]:
            assert f"handling: {team}</span>" in permalink  # under each passage, as in the reply
        if 'id="p1"' in permalink:  # an abstention may quote no passage
            assert opened.goto(f"{served}/answers/{answer_id}/passages/1").ok
            seen.keep(opened)
        opened.close()
        for suffix in (".md", ".json"):
            export = page.request.get(f"{served}/answers/{answer_id}{suffix}")
            assert export.ok
            seen.pages.append((export.url, export.text()))

    # the history after a reload
    page.reload()
    expect(page.locator("#tqa-chat .message.user").filter(has_text=OTHER_QUESTION[team])).to_be_visible(timeout=15_000)
    expect(replies(page)).to_have_count(2)
    expect(replies(page).first).to_contain_text(f"handling: {team}")
    seen.keep(page)

    # the other analyst's answer, by its permalink: not found, whatever the route
    their_answer = _get_json(f"{served}/api/ask", _headers(other), {"question": OWN_QUESTION[other], "k": 1})
    assert their_answer["passages"][0]["source"] == OWN_PATH[other]
    for path in (f"answers/{their_answer['id']}", f"answers/{their_answer['id']}.md",
                 f"answers/{their_answer['id']}.json", f"answers/{their_answer['id']}/passages/1",
                 f"api/documents/{document_ids[other]}/file"):  # fmt: skip
        opened = seen.record(context.new_page())
        assert opened.goto(f"{served}/{path}").status == 404, path
        seen.keep(opened)
        opened.close()

    mine = [url for url, body in seen.bodies if SECRETS[team][3] in body]
    assert any("/gradio_api/" in url for url in mine), "the recorded responses include the chat's replies"
    assert not _leaks(seen.pages, _secrets_of(other, document_ids))
    assert not _leaks(seen.bodies, _secrets_of(other, document_ids))
    context.close()
