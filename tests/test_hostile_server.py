"""Hostile requests against the web server (issue 13, items 7, 8, 9 and 12): body limits before
parsing, a bounded and gated /api/verify limited to indexed documents, Gradio's outward-facing
routes closed, one validation for the API and Gradio, health that says when answers fail, and
unexpected errors that keep the connection open."""

from __future__ import annotations

import http.client
import json
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import uvicorn
from fastapi.testclient import TestClient

from threatqa.api import MAX_VERIFY_CITATIONS, Gate, create_app
from threatqa.config import Settings
from threatqa.engine import Engine
from threatqa.ui import UNRECORDED_TEXT

QUESTION = "How much money is laundered through the UK each year?"


@pytest.fixture()
def engine(settings: Settings) -> Engine:
    return Engine.start(settings, build="stale", log=lambda message: None)


@pytest.fixture()
def client(settings: Settings, engine: Engine) -> Iterator[TestClient]:
    with TestClient(create_app(settings, engine), raise_server_exceptions=False) as client:  # Gradio's queue runs
        yield client


# 7. request bodies ----------------------------------------------------------------------------


def test_body_over_the_limit_is_refused_before_parsing(client: TestClient, settings: Settings) -> None:
    big = b'{"question": "' + b"x" * (settings.max_request_kb * 1024 + 1) + b'"}'
    response = client.post("/api/ask", content=big, headers={"Content-Type": "application/json"})
    assert response.status_code == 413 and "THREATQA_MAX_REQUEST_KB" in response.json()["detail"]


def test_streamed_body_without_length_is_cut_at_the_limit(client: TestClient, settings: Settings) -> None:
    sent = []

    def chunks() -> Iterator[bytes]:
        yield b'{"question": "'
        for _ in range(settings.max_request_kb * 2):  # twice the limit, in 1 KB pieces
            sent.append(1)
            yield b"x" * 1024
        yield b'"}'

    response = client.post("/api/ask", content=chunks(), headers={"Content-Type": "application/json"})
    assert response.status_code == 413


def test_a_lying_content_length_is_refused(client: TestClient) -> None:
    response = client.post("/api/ask", content=b"{}", headers={"Content-Length": "nope"})
    assert response.status_code in (400, 413)


def test_many_document_entries_get_a_short_422(client: TestClient) -> None:
    body = {"question": QUESTION, "documents": [f"missing-{i}.txt" for i in range(900)]}
    response = client.post("/api/ask", json=body)
    assert response.status_code == 422 and "900 unknown document(s)" in response.json()["detail"]
    assert len(response.content) < 1000
    wrong_types = {"question": QUESTION, "documents": list(range(5000))}
    response = client.post("/api/ask", json=wrong_types)
    assert response.status_code == 422 and len(response.content) < 1000


# 8. /api/verify ---------------------------------------------------------------------------------


def _answer(client: TestClient) -> dict:
    return client.post("/api/ask", json={"question": QUESTION}).json()


def test_verify_reads_each_document_once(client: TestClient, monkeypatch: pytest.MonkeyPatch) -> None:
    answer = _answer(client)
    reads = []
    import threatqa.verify as verify

    real = verify.read_document
    monkeypatch.setattr(verify, "read_document", lambda *a, **k: reads.append(a[1]) or real(*a, **k))
    many = [answer] * (MAX_VERIFY_CITATIONS // len(answer["passages"]))
    verdict = client.post("/api/verify", json=many).json()
    assert verdict["ok"] and len(verdict["findings"]) == len(many) * len(answer["passages"])
    assert len(reads) == 1


def test_verify_is_bounded(client: TestClient) -> None:
    answer = _answer(client)
    too_many = [answer] * (MAX_VERIFY_CITATIONS // len(answer["passages"]) + 1)
    response = client.post("/api/verify", json=too_many)
    assert response.status_code == 422 and "in parts" in response.json()["detail"]


def test_verify_waits_for_the_gate(settings: Settings, engine: Engine) -> None:
    client = TestClient(create_app(settings.model_copy(update={"workers": 1, "queue_size": 0}), engine))
    answer = _answer(client)
    gate: Gate = client.app.state.gate
    with gate.slot():  # every worker busy: verify is refused like a question
        response = client.post("/api/verify", json=answer)
    assert response.status_code == 503


def test_verify_reads_only_indexed_documents_and_never_names_the_folder(client: TestClient, settings: Settings) -> None:
    answer = _answer(client)
    (settings.docs / ".secret.txt").write_text("The vault code is 4321.\n", encoding="utf-8")
    (settings.docs / "later.txt").write_text("Written after the index was built.\n", encoding="utf-8")
    outside = settings.docs.parent / "outside.txt"
    outside.write_text("Outside the docs folder.\n", encoding="utf-8")
    probes = []
    for source, text in ((".secret.txt", "The vault code"), ("later.txt", "Written after"),
                         ("../outside.txt", "Outside the"), ("/etc/passwd", "root:x")):  # fmt: skip
        probes.append({"source": source, "start": 0, "end": len(text), "text": text, "rank": 1})
    response = client.post("/api/verify", json={"question": "q", "passages": probes})
    body = response.text
    assert response.status_code == 200
    assert [f["status"] for f in response.json()["findings"]] == ["document_removed"] * 4
    assert "4321" not in body and "root:" not in body and str(settings.docs.resolve()) not in body
    assert str(settings.docs) not in client.post("/api/verify", json=answer).text


@pytest.mark.parametrize(
    "body",
    [
        {"passages": [{"text": "x"}]},
        {"passages": "not a list"},
        {"passages": ["a string"]},
        {"passages": [{"source": "a.txt", "start": "x", "end": 1, "text": "t"}]},
        {"passages": [{"source": "a.txt", "start": -5, "end": 1, "text": "t"}]},
        {"passages": [{"source": ["a"], "start": 0, "end": 1, "text": "t"}]},
        {"passages": [{"source": "a.txt", "start": 0, "end": 1, "text": 5}]},
        {"question": "q", "passages": None},
        [1, 2, 3],
    ],
)
def test_malformed_citations_are_422_not_500(client: TestClient, body: object) -> None:
    response = client.post("/api/verify", json=body)
    assert response.status_code == 422, response.text
    assert "detail" in response.json()


# 9. Gradio's outward-facing routes ---------------------------------------------------------------


@pytest.fixture()
def listener() -> Iterator[tuple[str, list[str]]]:
    """A server on another loopback address that records every connection made to it."""
    seen: list[str] = []
    sock = socket.socket()
    sock.bind(("127.0.0.2", 0))
    sock.listen()
    sock.settimeout(0.2)
    stop = threading.Event()

    def accept() -> None:
        while not stop.is_set():
            try:
                conn, peer = sock.accept()
            except OSError:
                continue
            seen.append(str(peer))
            conn.close()

    thread = threading.Thread(target=accept, daemon=True)
    thread.start()
    yield f"http://127.0.0.2:{sock.getsockname()[1]}", seen
    stop.set()
    thread.join()
    sock.close()


def test_gradio_fetches_no_url_and_takes_no_upload(client: TestClient, listener: tuple[str, list[str]]) -> None:
    url, seen = listener
    for path in (f"/gradio_api/file={url}/x.png", f"/gradio_api/proxy={url}/x", f"/file={url}/x.png"):
        assert client.get(path).status_code == 404, path
    upload = client.post("/gradio_api/upload", files={"files": ("a.txt", b"hello")})
    assert upload.status_code == 404
    for path in ("/gradio_api/run-history/buckets", "/gradio_api/runs", "/gradio_api/vibe-code",
                 "/gradio_api/profiling/summary", "/gradio_api/dev/reload", "/gradio_api/mcp/sse"):  # fmt: skip
        assert client.get(path).status_code == 404, path
    chat = client.post(
        "/gradio_api/call/ask", json={"data": [QUESTION, 3, None]}, headers={"X-Gradio-History-Bucket": "a/b"}
    )
    assert chat.status_code == 200
    time.sleep(0.5)
    assert seen == []
    assert client.app is not None


def test_run_history_is_off(client: TestClient) -> None:
    config = client.get("/config").json()
    assert config.get("run_history") is False


def _call(client: TestClient, data: list[object]) -> str:
    event = client.post("/gradio_api/call/ask", json={"data": data})
    assert event.status_code == 200
    return client.get(f"/gradio_api/call/ask/{event.json()['event_id']}").text


@pytest.mark.parametrize(
    ("data", "message"),
    [
        ([None, 5, None], "must be text"),
        (["", 5, None], "empty"),
        ([QUESTION, -1, None], "from 1 to 100"),
        ([QUESTION, 10**9, None], "from 1 to 100"),
        ([QUESTION, 5, "NCA.txt"], "must be a list"),
        ([QUESTION, 5, ["missing.txt"]], "unknown document"),
    ],
)
def test_gradio_ask_validates_like_the_api(client: TestClient, data: list[object], message: str) -> None:
    stream = _call(client, data)
    assert "event: error" in stream and message in stream.lower(), stream


# 12. health, audit failures, unexpected errors ----------------------------------------------------


def test_health_fails_when_the_audit_log_cannot_be_written(settings: Settings, tmp_path: Path) -> None:
    blocker = tmp_path / "not-a-folder"
    blocker.write_text("a file where the audit folder should be", encoding="utf-8")
    failing = settings.model_copy(update={"audit": blocker / "audit.sqlite3"})
    engine = Engine.start(failing, build="stale", log=lambda m: None)
    with TestClient(create_app(failing, engine)) as client:
        _check_failing_health(client, tmp_path)


def _check_failing_health(client: TestClient, tmp_path: Path) -> None:
    health = client.get("/api/health")
    assert health.status_code == 503 and health.json()["status"] == "failing"
    assert health.json()["problems"] and str(tmp_path) not in health.text
    asked = client.post("/api/ask", json={"question": QUESTION})
    assert asked.status_code == 503 and str(tmp_path) not in asked.text
    stream = _call(client, [QUESTION, 3, None])
    assert UNRECORDED_TEXT in stream and str(tmp_path) not in stream and "sqlite" not in stream.lower()


def test_unexpected_error_is_a_500_and_keeps_the_connection(
    settings: Settings, engine: Engine, monkeypatch: pytest.MonkeyPatch
) -> None:
    app = create_app(settings, engine)
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="critical"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    for _ in range(100):
        if server.started:
            break
        time.sleep(0.05)

    def broken() -> list:
        raise RuntimeError("/secret/path exploded")

    monkeypatch.setattr(engine, "documents", broken)
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    try:
        conn.request("GET", "/api/documents")
        first = conn.getresponse()
        body = first.read()
        assert first.status == 500 and b"/secret/path" not in body
        assert json.loads(body)["detail"].startswith("internal error")
        conn.request("GET", "/api/openapi.json")  # the same connection
        second = conn.getresponse()
        assert second.status == 200 and second.read()
    finally:
        conn.close()
        server.should_exit = True
        thread.join(10)
