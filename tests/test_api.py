"""The JSON API and the portal guards (auth, CORS, frame-ancestors, limits) through FastAPI's TestClient."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Callable
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from threatqa.api import PROGRESS_POLL_S, QUEUE_POLL_S, Busy, Gate, create_app
from threatqa.config import Settings
from threatqa.engine import Engine

QUESTION = "How many people are involved in serious organised crime in the UK?"
PORTAL = "https://portal.example.org"


@pytest.fixture()
def engine(settings: Settings) -> Engine:
    return Engine.start(settings, build="stale", log=lambda message: None)


@pytest.fixture()
def client_for(settings: Settings, engine: Engine) -> Callable[..., TestClient]:
    """A TestClient for the app built with these settings changed."""

    def make(**changes: object) -> TestClient:
        return TestClient(create_app(settings.model_copy(update=changes), engine))

    return make


@pytest.fixture()
def client(client_for: Callable[..., TestClient]) -> TestClient:
    return client_for()


def test_ask_returns_the_ask_json_object(client: TestClient, engine: Engine) -> None:
    response = client.post("/api/ask", json={"question": QUESTION, "k": 2})
    assert response.status_code == 200
    body = response.json()
    expected = engine.ask(QUESTION, 2).to_json()
    assert set(body) == set(expected)
    assert body["answered"] is True
    assert len(body["passages"]) == 2
    assert "59,000 people" in body["passages"][0]["text"]
    assert body["passages"][0]["reference"].startswith("NCA annual assessment speech 2023-07-17")
    assert body["index_version"] == engine.status().index_version


def test_ask_sends_the_answers_json_as_logged(client: TestClient, engine: Engine) -> None:
    body = client.post("/api/ask", json={"question": QUESTION, "k": 3}).json()
    record = engine.audit.get(body["id"])
    assert record is not None
    assert body == {key: value for key, value in record.payload.items() if key != "settings"}
    again = engine.ask(QUESTION, 3).to_json()
    assert body | {"id": again["id"]} == again  # the object `ask(...).to_json()` makes: only the record id differs


def test_ask_restricted_to_documents(client: TestClient, engine: Engine) -> None:
    path = engine.documents()[0].path
    body = client.post("/api/ask", json={"question": QUESTION, "documents": [path]}).json()
    assert body["searched"] == [path]
    unknown = client.post("/api/ask", json={"question": QUESTION, "documents": ["nope.pdf"]})
    assert unknown.status_code == 422
    assert "unknown document(s): 'nope.pdf'" in unknown.json()["detail"]
    assert "/api/documents lists the ids and paths" in unknown.json()["detail"]


def test_ask_rejects_bad_input_with_clear_messages(client: TestClient, settings: Settings) -> None:
    too_long = client.post("/api/ask", json={"question": "why " * settings.max_question_chars})
    assert too_long.status_code == 413
    assert f"the limit is {settings.max_question_chars}" in too_long.json()["detail"]
    bad_k = client.post("/api/ask", json={"question": QUESTION, "k": 0})
    assert bad_k.status_code == 422
    assert bad_k.json()["detail"] == "invalid request: k: Input should be greater than or equal to 1"
    missing = client.post("/api/ask", json={"k": 3})
    assert missing.status_code == 422
    assert "question: Field required" in missing.json()["detail"]


def test_ask_takes_json_only_and_documents_its_body(client: TestClient, engine: Engine) -> None:
    # the route reads its own body (PlainRoute): JSON by its Content-Type only, as FastAPI's body parameters
    body = b'{"question": "How many people are involved in serious organised crime?"}'
    for kind in ("application/json; charset=utf-8", "Application/JSON", "application/vnd.threatqa+json"):
        assert client.post("/api/ask", content=body, headers={"Content-Type": kind}).json()["answered"] is True
    for kind in ("text/plain", "application/x-www-form-urlencoded", "multipart/form-data; boundary=x", ""):
        refused = client.post("/api/ask", content=body, headers={"Content-Type": kind})
        assert refused.status_code == 422, kind
        assert refused.json()["detail"] == "invalid request: body: send JSON, with Content-Type: application/json"
    assert len(engine.audit.records()) == 3  # nothing refused was answered or logged
    broken = client.post("/api/ask", content=b'{"question": ', headers={"Content-Type": "application/json"})
    assert broken.json()["detail"] == "invalid request: body: not JSON at character 13"
    extra = client.post("/api/ask", json={"question": QUESTION, "top": 3})
    assert extra.json()["detail"] == "invalid request: top: Extra inputs are not permitted"
    schema = client.get("/api/openapi.json").json()["paths"]["/api/ask"]["post"]["requestBody"]
    fields = schema["content"]["application/json"]["schema"]
    assert schema["required"] is True and set(fields["properties"]) == {"question", "k", "documents"}
    assert fields["required"] == ["question"] and fields["additionalProperties"] is False


def test_documents_and_health(client: TestClient, engine: Engine) -> None:
    documents = client.get("/api/documents").json()
    assert [d["path"] for d in documents] == [d.path for d in engine.documents()]
    assert set(documents[0]) >= {"id", "title", "date", "path", "passages"}
    assert documents[0]["date"] == "2023-07-17"
    health = client.get("/api/health").json()
    assert health["status"] == "ok"
    assert health["mode"] == "lexical"
    assert health["index_version"] == engine.index.manifest.id
    assert health["passages"] == sum(d["passages"] for d in documents)


def test_ui_is_served_with_frame_ancestors(client_for: Callable[..., TestClient]) -> None:
    client = client_for(frame_ancestors=f"'self' {PORTAL}")
    for path in ("/", "/api/health", "/config"):
        response = client.get(path)
        assert response.status_code == 200, path
        assert response.headers["content-security-policy"] == f"frame-ancestors 'self' {PORTAL}"
    assert "<title>ThreatQA</title>" in client.get("/").text or "ThreatQA" in client.get("/config").text


def test_no_auth_lets_everyone_in(client: TestClient) -> None:
    assert client.get("/api/health").status_code == 200
    assert client.get("/").status_code == 200


def test_token_auth_guards_ui_and_api(client_for: Callable[..., TestClient]) -> None:
    client = client_for(auth="token", auth_token="s3cret")
    for path in ("/", "/config", "/api/health", "/api/documents"):
        refused = client.get(path)
        assert refused.status_code == 401, path
        assert refused.json() == {"detail": "a valid token is needed (Authorization: Bearer <token>)"}
    assert client.post("/api/ask", json={"question": QUESTION}).status_code == 401
    assert client.get("/api/health", headers={"Authorization": "Bearer wrong"}).status_code == 401
    assert client.get("/api/health", headers={"Authorization": "Bearer s3cret"}).status_code == 200
    ask = client.post("/api/ask", json={"question": QUESTION}, headers={"Authorization": "Bearer s3cret"})
    assert ask.status_code == 200
    # a browser opens ?token=... once; the HttpOnly cookie then carries it for the UI's own requests
    page = client.get("/?token=s3cret")
    assert page.status_code == 200
    assert "HttpOnly" in page.headers["set-cookie"]
    assert client.get("/config").status_code == 200


def test_token_auth_needs_a_token() -> None:
    from threatqa.errors import ConfigError

    with pytest.raises(ConfigError, match="THREATQA_AUTH_TOKEN"):
        create_app(Settings.load(auth="token"), engine=object())  # type: ignore[arg-type]


def test_header_auth_takes_the_user_from_the_portal_proxy(
    client_for: Callable[..., TestClient], engine: Engine, monkeypatch: pytest.MonkeyPatch
) -> None:
    client = client_for(auth="header", auth_header="X-Portal-User")
    assert client.get("/").status_code == 401
    refused = client.get("/api/health")
    assert refused.status_code == 401
    assert "X-Portal-User" in refused.json()["detail"]
    users = []
    ask = engine.ask_logged
    monkeypatch.setattr(engine, "ask_logged", lambda *a, **kw: users.append(kw["access"].user) or ask(*a, **kw))
    response = client.post("/api/ask", json={"question": QUESTION}, headers={"X-Portal-User": "alice"})
    assert response.status_code == 200
    assert users == ["alice"]
    assert client.get("/", headers={"X-Portal-User": "alice"}).status_code == 200


def test_cors_allows_only_configured_origins(client_for: Callable[..., TestClient]) -> None:
    client = client_for(cors_origins=f"{PORTAL}, https://other.example.org")
    allowed = client.get("/api/health", headers={"Origin": PORTAL})
    assert allowed.headers["access-control-allow-origin"] == PORTAL
    foreign = client.get("/api/health", headers={"Origin": "https://evil.example.com"})
    assert "access-control-allow-origin" not in foreign.headers
    preflight = {
        "Origin": PORTAL,
        "Access-Control-Request-Method": "POST",
        "Access-Control-Request-Headers": "content-type",
    }
    assert client.options("/api/ask", headers=preflight).status_code == 200
    evil = client.options("/api/ask", headers=preflight | {"Origin": "https://evil.example.com"})
    assert evil.status_code == 400
    assert "access-control-allow-origin" not in evil.headers
    # the Gradio routes follow the same rule (it defers to our CORS middleware)
    assert "access-control-allow-origin" not in client.get("/config", headers={"Origin": "http://localhost:9"}).headers


def test_busy_when_the_queue_is_full(client_for: Callable[..., TestClient]) -> None:
    client = client_for(workers=1, queue_size=1)
    gate: Gate = client.app.state.gate  # type: ignore[attr-defined]
    release = threading.Event()

    def hold() -> None:
        with gate.slot():
            release.wait(10)

    holders = [threading.Thread(target=hold) for _ in range(gate.capacity)]  # one runs, one waits
    for holder in holders:
        holder.start()
    try:
        for _ in range(500):
            if gate.taken == gate.capacity:
                break
            time.sleep(0.01)
        busy = client.post("/api/ask", json={"question": QUESTION})
        assert busy.status_code == 503
        assert busy.json()["detail"] == "The server is busy answering other questions; try again in a moment."
        assert busy.headers["retry-after"] == "5"
    finally:
        release.set()
        for holder in holders:
            holder.join()
    assert gate.taken == 0
    assert client.post("/api/ask", json={"question": QUESTION}).status_code == 200


def test_gate_run_refuses_at_once_when_full_and_gives_places_back() -> None:
    gate = Gate(workers=1, queue_size=1)
    started, release = threading.Event(), threading.Event()

    def hold() -> str:
        started.set()
        release.wait(10)
        return "held"

    async def scenario() -> None:
        running = asyncio.create_task(gate.run(hold))
        await asyncio.to_thread(started.wait, 10)
        waiting = asyncio.create_task(gate.run(lambda: "waited"))  # takes the one place in line
        for _ in range(500):
            if gate.taken == 2:
                break
            await asyncio.sleep(0.01)
        with pytest.raises(Busy):
            await gate.run(lambda: "refused")
        running.cancel()  # its request goes away: the question still ends, and frees its place
        release.set()
        assert await waiting == "waited"
        for _ in range(500):
            if gate.taken == 0:
                break
            await asyncio.sleep(0.01)
        assert gate.taken == 0
        assert await gate.run(lambda: 42) == 42

    asyncio.run(scenario())


def test_gradio_queue_polls_at_the_set_rate(client: TestClient) -> None:
    mounted = [route.app for route in client.app.routes if hasattr(getattr(route, "app", None), "blocks")]  # type: ignore[attr-defined]
    queue = mounted[0].blocks._queue
    # private attributes of Gradio's queue: an upgrade that renames them fails here, not silently
    assert (queue.sleep_when_free, queue.progress_update_sleep_when_free) == (QUEUE_POLL_S, PROGRESS_POLL_S)


def test_errors_carry_no_traceback_or_path(client: TestClient, engine: Engine, monkeypatch: pytest.MonkeyPatch) -> None:
    def boom(*args: object, **kwargs: object) -> None:
        raise RuntimeError("/secret/path/engine.py exploded")

    monkeypatch.setattr(engine, "ask_logged", boom)
    client = TestClient(client.app, raise_server_exceptions=False)
    response = client.post("/api/ask", json={"question": QUESTION})
    assert response.status_code == 500
    assert response.json() == {"detail": "internal error; the server log has the details"}


def test_verify_endpoint_round_trip(settings: Settings) -> None:
    from fastapi.testclient import TestClient

    from threatqa.api import create_app

    client = TestClient(create_app(settings))
    answer = client.post("/api/ask", json={"question": "How much heroin is consumed each year?", "k": 2}).json()
    verdict = client.post("/api/verify", json=answer).json()
    assert verdict["ok"] is True and len(verdict["findings"]) == 2
    path = settings.docs / answer["passages"][0]["source"]
    path.write_text(path.read_text(encoding="utf-8").replace("40 tonnes", "41 tonnes"), encoding="utf-8")
    verdict = client.post("/api/verify", json=[answer]).json()
    assert verdict["ok"] is False and {f["status"] for f in verdict["findings"]} == {"document_edited"}
    bad = client.post("/api/verify", json={"passages": [{"text": "x"}]})
    assert bad.status_code == 422 and "citation" in bad.json()["detail"]


def test_audit_failure_is_a_503_without_paths(settings: Settings, tmp_path: Path) -> None:
    from fastapi.testclient import TestClient

    from threatqa.api import create_app

    blocker = tmp_path / "blocker"
    blocker.write_text("a file where the audit folder should be")
    client = TestClient(create_app(settings.model_copy(update={"audit": blocker / "audit.sqlite3"})))
    response = client.post("/api/ask", json={"question": "cocaine"})
    assert response.status_code == 503 and "audit log" in response.json()["detail"]
    assert str(tmp_path) not in response.text and "passages" not in response.text


def test_served_under_a_path_prefix(client_for: Callable[..., TestClient]) -> None:
    """Behind a proxy that strips /threatqa, pages and the Gradio config point back under the prefix."""
    client = client_for(root_path="/threatqa")
    page = client.get("/")
    assert page.status_code == 200 and '"root":"http://testserver/threatqa"' in page.text
    assert client.get("/config").json()["root"] == "http://testserver/threatqa"
    assert client.get("/api/health").json()["status"] == "ok"
