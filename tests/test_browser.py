"""The chat UI in a real browser: Playwright drives Debian's Chromium against `threatqa serve`.

Run with `python -m pytest -m browser`; needs `apt-get install chromium`. Leaves a screenshot of the
answered page in tests/output/answered.png.
"""

from __future__ import annotations

import os
import re
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

from browser_support import CHROMIUM, CHROMIUM_ARGS, OUTPUT
from conftest import CORPUS, CORPUS_FILE

pytestmark = pytest.mark.browser

HOSTILE_DOC = """Harbour smuggling bulletin

The harbour smuggling ring hides contraband inside refrigerated containers at night. \
<img src=x onerror=alert(1)> <script>alert(2)</script> ![tracker](http://127.0.0.2/x.png) $$x$$ \
were found in the manifest.

Customs officers inspect refrigerated containers more often since the ring was exposed.
"""
HOSTILE_QUESTION = "How does the harbour smuggling ring hide contraband in refrigerated containers?"
HOSTILE_MARKDOWN = """# Phishing kit advisory

The phishing kit advisory warns that counterfeit parcel notices harvest bank logins.
[track your parcel](javascript:alert(3)) <a href="javascript:alert(4)">login</a>
<form action="http://127.0.0.2/steal"><input name="password"></form>
<div style="position:fixed;top:0;left:0;width:100%;height:100%;background:red">overlay</div>

```mermaid
graph TD; A-->B; click A callback "javascript:alert(5)"
```

$$\\frac{1}{0}$$ and <iframe src="http://127.0.0.2/"></iframe> end the advisory.
"""
MARKDOWN_QUESTION = "What does the phishing kit advisory say about counterfeit parcel notices?"
MARKUP_LITERALS = (
    "[track your parcel](javascript:alert(3))", '<a href="javascript:alert(4)">login</a>',
    '<form action="http://127.0.0.2/steal">', '<div style="position:fixed;', "$$\\frac{1}{0}$$",
    # a reply shows Markdown as read (ingest_display): a fence as its content, never drawn as a diagram
    'graph TD; A-->B; click A callback "javascript:alert(5)"',
    '<iframe src="http://127.0.0.2/"></iframe>',
)  # fmt: skip
# links are only ever ours: the answer's pages and original files, by id
FOREIGN_LINK = "a:not([href^='answers/']):not([href^='api/documents/'])"
FROM_DOCUMENT_TEXT = (
    f"form, input, iframe, img, script, {FOREIGN_LINK}, .katex, .mermaid, [style*='position:fixed'], [onerror]"
)


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """`threatqa serve` in a subprocess over the corpus plus a document full of markup."""
    if not Path(CHROMIUM).exists():
        pytest.skip(f"{CHROMIUM} is not installed (apt-get install chromium)")
    root = tmp_path_factory.mktemp("served")
    docs = root / "docs"
    docs.mkdir()
    shutil.copy(CORPUS / CORPUS_FILE, docs / CORPUS_FILE)
    (docs / "harbour-bulletin.txt").write_text(HOSTILE_DOC, encoding="utf-8")
    (docs / "phishing-advisory.md").write_text(HOSTILE_MARKDOWN, encoding="utf-8")
    port = _free_port()
    # the default (bundled) model: the browser sees the hybrid answers users get
    env = {k: v for k, v in os.environ.items() if not k.startswith("THREATQA_")}
    env |= {"THREATQA_AUDIT": str(root / "audit.sqlite3"), "HF_HUB_OFFLINE": "1"}
    command = [sys.executable, "-m", "threatqa.cli", "serve", "--docs", str(docs), "--index", str(root / "index")]
    log = (root / "server.log").open("w")
    process = subprocess.Popen([*command, "--port", str(port)], env=env, stdout=log, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    try:
        _wait_until_up(url + "/api/health", process, root / "server.log")
        yield url
    finally:
        process.terminate()
        process.wait(10)
        log.close()


def _wait_until_up(url: str, process: subprocess.Popen[bytes], log: Path, seconds: float = 60) -> None:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if process.poll() is not None:
            pytest.fail(f"server exited: {log.read_text()}")
        try:
            with urllib.request.urlopen(url, timeout=1):
                return
        except OSError:
            time.sleep(0.2)
    pytest.fail(f"server not up after {seconds}s: {log.read_text()}")


def test_ask_cite_view_in_context_and_render_markup_literally(server: str) -> None:
    from playwright.sync_api import expect, sync_playwright

    dialogs: list[str] = []
    foreign: list[str] = []
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        page = browser.new_page(viewport={"width": 1400, "height": 1100})
        page.on("dialog", lambda dialog: (dialogs.append(dialog.message), dialog.dismiss()))
        page.on("request", lambda request: None if request.url.startswith(server) else foreign.append(request.url))
        page.goto(server + "/")
        expect(page.locator("#tqa-status")).to_contain_text("Mode: hybrid", timeout=60_000)
        expect(page.locator("#tqa-status")).to_contain_text("3 documents")

        _ask(page, "How many people are involved in serious organised crime in the UK?")
        reply = page.locator("#tqa-chat .message.bot").last
        expect(reply).to_contain_text("[1] NCA annual assessment speech 2023-07-17", timeout=30_000)
        expect(reply).to_contain_text("best match")
        expect(reply.locator("mark").first).to_contain_text("59,000 people")

        page.get_by_text("View in context").click()
        context = page.locator("#tqa-context")
        expect(context).to_contain_text("characters", timeout=10_000)
        expect(context.locator("mark").first).to_be_visible()
        assert "…" in context.inner_text()
        reference = re.compile(r"^NCA annual assessment speech 2023-07-17, 2023-07-17, paras? [0-9-]+: \"")
        expect(page.locator("#tqa-ref textarea")).to_have_value(reference)

        _ask(page, HOSTILE_QUESTION)
        reply = page.locator("#tqa-chat .message.bot").last
        expect(reply).to_contain_text("Harbour smuggling bulletin", timeout=30_000)
        shown = reply.inner_text()
        for literal in ("<img src=x onerror=alert(1)>", "<script>alert(2)</script>",
                        "![tracker](http://127.0.0.2/x.png)", "$$x$$"):  # fmt: skip
            assert literal in shown
        expect(page.locator("#tqa-context")).to_contain_text("<script>alert(2)</script>")
        assert page.locator("#tqa-chat img, #tqa-context img").count() == 0
        assert page.locator("#tqa-chat script, #tqa-context script, #tqa-chat .katex").count() == 0
        assert page.locator(f"#tqa-chat {FOREIGN_LINK}").count() == 0
        OUTPUT.mkdir(exist_ok=True)
        page.screenshot(path=str(OUTPUT / "hostile-html.png"), full_page=True)

        _ask(page, MARKDOWN_QUESTION)
        reply = page.locator("#tqa-chat .message.bot").last
        expect(reply).to_contain_text("Phishing kit advisory", timeout=30_000)
        shown = reply.inner_text()
        missing = [literal for literal in MARKUP_LITERALS if literal not in shown]
        assert not missing, f"not shown literally: {missing}"
        for area in ("#tqa-chat .message", "#tqa-context"):
            assert page.locator(area).locator(FROM_DOCUMENT_TEXT).count() == 0, area
        page.wait_for_timeout(500)  # give a stray onerror, script or fetch time to happen
        page.screenshot(path=str(OUTPUT / "answered.png"), full_page=True)
        browser.close()
    assert dialogs == []
    assert foreign == []


def _ask(page: object, question: str) -> None:
    box = page.locator("#tqa-question textarea")  # type: ignore[attr-defined]
    box.fill(question)
    box.press("Enter")
