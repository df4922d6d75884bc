"""Token auth inside a cross-site iframe over https, with third-party cookies blocked (issue 14).

Everything stays on loopback: a portal page at https://127.0.0.2 frames https://127.0.0.1, a small
TLS reverse proxy (uvicorn + httpx, adding X-Forwarded-Proto as nginx would) in front of
`threatqa serve --auth token`. 127.0.0.1 and 127.0.0.2 are different sites to the browser, so the
app's cookie is a third-party cookie: it is kept only because it is Partitioned.
"""

from __future__ import annotations

import datetime
import ipaddress
import shutil
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from browser_support import ask, free_port, launch, need_chromium, serving
from conftest import CORPUS, CORPUS_FILE

pytestmark = pytest.mark.browser

TOKEN = "iframe-test-token-0123456789"
# Chromium's switch for blocking third-party cookies as browsers now do by default
BLOCK_THIRD_PARTY = ["--test-third-party-cookie-phaseout", "--enable-features=ThirdPartyStoragePartitioning"]


def _certificate(folder: Path) -> tuple[Path, Path]:
    """A self-signed certificate for 127.0.0.1 and 127.0.0.2, made here (nothing is downloaded)."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "threatqa-test")])
    now = datetime.datetime.now(datetime.UTC)
    ips = [x509.IPAddress(ipaddress.ip_address(ip)) for ip in ("127.0.0.1", "127.0.0.2")]
    cert = (
        x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
        .serial_number(x509.random_serial_number()).not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.SubjectAlternativeName(ips), critical=False)
        .sign(key, hashes.SHA256())
    )  # fmt: skip
    cert_path, key_path = folder / "cert.pem", folder / "key.pem"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(
        key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    )
    return cert_path, key_path


class Proxy:
    """An ASGI reverse proxy to `backend` that says the client came over https (X-Forwarded-Proto)."""

    def __init__(self, backend: str) -> None:
        self.backend = backend

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        import httpx

        if scope["type"] != "http":
            return
        body, more = b"", True
        while more:
            message = await receive()
            body += message.get("body", b"")
            more = message.get("more_body", False)
        skip = {b"connection", b"accept-encoding", b"content-length", b"transfer-encoding"}
        headers = [(k, v) for k, v in scope["headers"] if k.lower() not in skip] + [(b"x-forwarded-proto", b"https")]
        query = scope.get("query_string", b"").decode("latin-1")
        url = self.backend + scope["raw_path"].decode("latin-1") + (f"?{query}" if query else "")
        async with httpx.AsyncClient(timeout=None) as client:
            response = await client.send(client.build_request(scope["method"], url, headers=headers, content=body),
                                         stream=True)  # fmt: skip
            kept = [(k, v) for k, v in response.headers.raw if k.lower() not in (b"connection", b"transfer-encoding")]
            await send({"type": "http.response.start", "status": response.status_code, "headers": kept})
            async for chunk in response.aiter_raw():
                await send({"type": "http.response.body", "body": chunk, "more_body": True})
            await send({"type": "http.response.body", "body": b"", "more_body": False})
            await response.aclose()


def _portal(frame_url: str) -> Any:
    async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return
        page = (
            '<!DOCTYPE html><html lang="en"><head><title>Portal</title></head><body><h1>Portal</h1>'
            f'<iframe id="tqa" src="{frame_url}" title="ThreatQA" style="width:1200px;height:900px;border:0">'
            "</iframe></body></html>"
        ).encode()
        await send({"type": "http.response.start", "status": 200, "headers": [(b"content-type", b"text/html")]})
        await send({"type": "http.response.body", "body": page})

    return app


@pytest.fixture()
def https_servers(tmp_path: Path) -> Iterator[tuple[str, str]]:
    """(portal URL on 127.0.0.2, app URL on 127.0.0.1), both https, the app behind the TLS proxy."""
    import uvicorn

    need_chromium()
    docs = tmp_path / "docs"
    docs.mkdir()
    shutil.copy(CORPUS / CORPUS_FILE, docs / CORPUS_FILE)
    cert, key = _certificate(tmp_path)
    portal_port, proxy_port = free_port("127.0.0.2"), free_port()
    portal_origin = f"https://127.0.0.2:{portal_port}"
    env = {"THREATQA_AUTH": "token", "THREATQA_AUTH_TOKEN": TOKEN, "THREATQA_MODEL": "",
           "THREATQA_FRAME_ANCESTORS": f"'self' {portal_origin}"}  # fmt: skip
    app_url = f"https://127.0.0.1:{proxy_port}"
    with serving(tmp_path, docs, env) as backend:
        servers = [
            uvicorn.Server(
                uvicorn.Config(
                    app,
                    host=host,
                    port=port,
                    ssl_certfile=str(cert),
                    ssl_keyfile=str(key),
                    log_level="warning",
                    lifespan="off",
                )
            )
            for app, host, port in (
                (Proxy(backend), "127.0.0.1", proxy_port),
                (_portal(f"{app_url}/?token={TOKEN}"), "127.0.0.2", portal_port),
            )
        ]
        threads = [threading.Thread(target=server.run, daemon=True) for server in servers]
        for thread in threads:
            thread.start()
        deadline = time.monotonic() + 20
        while not all(server.started for server in servers) and time.monotonic() < deadline:
            time.sleep(0.05)
        try:
            yield portal_origin + "/", app_url
        finally:
            for server in servers:
                server.should_exit = True
            for thread in threads:
                thread.join(10)


def test_token_auth_works_in_a_cross_site_iframe_and_leaves_the_address_bar(https_servers: tuple[str, str]) -> None:
    from playwright.sync_api import expect, sync_playwright

    portal, app_url = https_servers
    with sync_playwright() as playwright:
        browser = launch(playwright, BLOCK_THIRD_PARTY)
        context = browser.new_context(ignore_https_errors=True, viewport={"width": 1300, "height": 1000})
        page = context.new_page()
        page.goto(portal)
        frame = page.frame_locator("#tqa")
        expect(frame.locator("#tqa-status")).to_contain_text("Mode: lexical", timeout=60_000)
        ask(frame, "How much cocaine is consumed in the UK?")  # the UI's own requests carry the cookie
        reply = frame.locator("#tqa-chat .message.bot").last
        expect(reply.get_by_role("link", name="Permalink")).to_be_visible(timeout=30_000)
        inner = next(f for f in page.frames if f.url.startswith(app_url))
        assert "token" not in inner.evaluate("location.href")  # gone from the address bar once exchanged
        cookies = [c for c in context.cookies(app_url) if c["name"] == "threatqa_token"]
        assert cookies and cookies[0]["secure"] and cookies[0]["sameSite"] == "None"
        assert cookies[0].get("partitionKey"), cookies[0]  # kept apart for the portal's site (CHIPS)
        browser.close()
