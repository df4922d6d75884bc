"""A question asked while the page is still loading keeps its reply (the CI failure of stop 29).

The page's load fills the chat with the user's history. On a busy server a reply could come back
before that load did, and the older history then replaced the chat: the reply vanished. The question
box now opens only once the load is done.
"""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest

from browser_support import DESKTOP, ask, launch, need_chromium, replies, serving, wait_for_replies
from conftest import CORPUS, CORPUS_FILE
from slow_load_server import SLOW_LOAD_S

pytestmark = pytest.mark.browser


@pytest.fixture(scope="module")
def slow_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    need_chromium()
    root = tmp_path_factory.mktemp("slow-load")
    docs = root / "docs"
    docs.mkdir()
    shutil.copy(CORPUS / CORPUS_FILE, docs / CORPUS_FILE)
    entry = (str(Path(__file__).with_name("slow_load_server.py")),)
    with serving(root, docs, {"THREATQA_MODEL": ""}, entry=entry) as url:
        yield url


def test_a_question_asked_during_the_load_keeps_its_reply(slow_url: str) -> None:
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        browser = launch(playwright)
        page = browser.new_page(viewport=DESKTOP)
        page.goto(slow_url + "/")
        box = page.get_by_label("Your question")
        box.wait_for()
        assert box.is_disabled()  # the load is still running: the box waits for it
        assert box.get_attribute("placeholder") == "Loading your conversation…"
        ask(page, "Which countries use organised crime groups?")  # waits until the box opens
        reply = wait_for_replies(page, 1)
        assert "organi" in reply.inner_text()
        page.wait_for_timeout(SLOW_LOAD_S * 1000 + 1000)  # well past any load still on its way
        assert replies(page).count() == 1
        assert page.evaluate("document.activeElement.closest('#tqa-question') !== null")  # the cursor is in the box
        browser.close()
