"""Helpers for the real-browser tests: start `threatqa serve` in a subprocess, launch Debian's Chromium."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = [
    "--no-sandbox", "--headless", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
    "--disable-sync", "--no-first-run",
]  # fmt: skip
OUTPUT = Path(__file__).parent / "output"
AXE = Path(__file__).resolve().parents[1] / ".cache" / "axe-core" / "axe.min.js"  # fetched by `make axe`
DESKTOP = {"width": 1440, "height": 900}
PHONE = {"width": 390, "height": 844}


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket() as sock:
        sock.bind((host, 0))
        return sock.getsockname()[1]


def need_chromium() -> None:
    if not Path(CHROMIUM).exists():
        pytest.skip(f"{CHROMIUM} is not installed (apt-get install chromium)")


@contextmanager
def serving(
    root: Path, docs: Path, env_extra: dict[str, str] | None = None, entry: tuple[str, ...] = ("-m", "threatqa.cli")
) -> Iterator[str]:
    """`threatqa serve` over `docs` on a free loopback port; yields its URL. `entry` runs another script
    with the CLI's arguments (e.g. one that slows a handler down)."""
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("THREATQA_")}
    env |= {"THREATQA_AUDIT": str(root / "audit.sqlite3"), "HF_HUB_OFFLINE": "1", **(env_extra or {})}
    command = [sys.executable, *entry, "serve", "--docs", str(docs), "--index", str(root / "index")]
    log_path = root / "server.log"
    log = log_path.open("w")
    process = subprocess.Popen([*command, "--port", str(port)], env=env, stdout=log, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    try:
        wait_until_up(url + "/api/health", process, log_path, headers=_auth_headers(env))
        yield url
    finally:
        process.terminate()
        try:
            process.wait(10)
        except subprocess.TimeoutExpired:  # an open event stream can hold a graceful shutdown up
            process.kill()
            process.wait(10)
        log.close()


def _auth_headers(env: dict[str, str]) -> dict[str, str]:
    if env.get("THREATQA_AUTH") == "token":
        return {"Authorization": f"Bearer {env['THREATQA_AUTH_TOKEN']}"}
    if env.get("THREATQA_AUTH") == "header":
        return {env.get("THREATQA_AUTH_HEADER", "X-Forwarded-User"): "health-check"}
    return {}


def wait_until_up(
    url: str, process: subprocess.Popen[bytes], log: Path, seconds: float = 120, headers: dict[str, str] | None = None
) -> None:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if process.poll() is not None:
            pytest.fail(f"server exited: {log.read_text()}")
        try:
            with urllib.request.urlopen(urllib.request.Request(url, headers=headers or {}), timeout=1):
                return
        except OSError:
            time.sleep(0.2)
    pytest.fail(f"server not up after {seconds}s: {log.read_text()}")


def launch(playwright: Any, extra_args: list[str] | None = None) -> Any:
    return playwright.chromium.launch(executable_path=CHROMIUM, args=[*CHROMIUM_ARGS, *(extra_args or [])])


def ask(page: Any, question: str) -> None:
    box = page.get_by_label("Your question")
    box.fill(question)
    box.press("Enter")


def replies(page: Any) -> Any:
    return page.locator("#tqa-chat .message.bot")


def wait_for_replies(page: Any, count: int, timeout: float = 30_000) -> Any:
    """The `count`-th reply, once it is complete (it ends with the links to its permalink)."""
    from playwright.sync_api import expect

    reply = replies(page).nth(count - 1)
    expect(reply.get_by_role("link", name="Permalink")).to_be_visible(timeout=timeout)
    return reply
