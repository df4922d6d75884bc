"""Reliability and security: hostile questions, file access, auth on every route, concurrency,
index rebuilds under load, audit faults and no outbound connections."""

from __future__ import annotations

import json
import socket
import threading
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from urllib.parse import quote

import pytest
from fastapi.testclient import TestClient

from threatqa.api import create_app
from threatqa.audit import AuditLog
from threatqa.config import Settings
from threatqa.engine import Engine
from threatqa.index import build_index, open_index

QUESTIONS = [
    "How much money does serious organised crime generate in the UK each year?",
    "What does wastewater analysis show about cocaine?",
    "How is ChatGPT being used by scammers?",
    "Which state has tolerated cybercriminal groups on its territory?",
    "banana bread recipe",
]


@pytest.fixture()
def engine(settings: Settings) -> Engine:
    return Engine.start(settings, build="stale", log=lambda message: None)


@pytest.fixture()
def client(settings: Settings, engine: Engine) -> TestClient:
    return TestClient(create_app(settings, engine))


# 1. bad questions ------------------------------------------------------------------------------

HOSTILE_QUESTIONS = {
    "empty": "",
    "whitespace": " \t\n ",
    "nul and controls": "cocaine\x00\x01\x07\x1b[31m tonnes",
    "lone surrogate": "cocaine \ud800 tonnes",
    "right-to-left override": "\u202ecocaine\u202c tonnes \u2066x\u2069",
    "10,000 repeated words": "cocaine " * 10_000,
    "one megabyte": "x" * 1_000_000,
}


@pytest.mark.parametrize("name", sorted(HOSTILE_QUESTIONS))
def test_hostile_questions_get_a_clear_answer_not_a_500(client: TestClient, name: str) -> None:
    body = json.dumps({"question": HOSTILE_QUESTIONS[name], "k": 3})  # ASCII JSON: a lone surrogate as \ud800
    response = client.post("/api/ask", content=body, headers={"Content-Type": "application/json"})
    assert response.status_code < 500
    if response.status_code == 200:
        answer = response.json()
        assert answer["answered"] in (True, False) and isinstance(answer["passages"], list)
    else:
        assert response.status_code in (413, 422) and response.json()["detail"]
    assert client.post("/api/ask", json={"question": QUESTIONS[0]}).json()["answered"] is True


def test_server_side_cap_is_enforced(client: TestClient, settings: Settings) -> None:
    response = client.post("/api/ask", json={"question": "a" * (settings.max_question_chars + 1)})
    assert response.status_code == 413 and str(settings.max_question_chars) in response.json()["detail"]


@pytest.mark.parametrize(
    "body",
    [b"not json", b"{", b"[]", b'{"question": 42}', b'{"question": ["a"]}', b'{"question": "x", "k": "five"}',
     b'{"question": "x", "k": -1}', b'{"question": "x", "documents": "all"}', b'{"question": null}', b"\xff\xfe"],
)  # fmt: skip
def test_malformed_api_bodies_are_422(client: TestClient, body: bytes) -> None:
    response = client.post("/api/ask", content=body, headers={"Content-Type": "application/json"})
    assert response.status_code == 422, response.text
    assert response.json()["detail"] and "Traceback" not in response.text


def test_forged_chat_history_is_cut(engine: Engine, settings: Settings) -> None:
    from threatqa.api import Gate
    from threatqa.ui import MAX_HISTORY, _Handlers

    handlers = _Handlers(engine, settings, Gate(1, 1))
    forged = [{"role": "user", "content": f"message {i}"} for i in range(10_000)]
    history, replies, *_ = handlers.ask(QUESTIONS[0], forged, [], None, None)
    assert len(history) == MAX_HISTORY + 2 and len(replies) == 1


# 3. file access ---------------------------------------------------------------------------------


def _file_routes(targets: list[str]) -> Iterator[str]:
    for target in targets:
        for encoded in (target, quote(target, safe=""), quote(quote(target, safe=""), safe="")):
            yield f"/gradio_api/file={encoded}"
            yield f"/file={encoded}"
    for traversal in ("../../../../etc/passwd", "..%2f..%2f..%2fetc%2fpasswd", "..%252f..%252fetc%252fpasswd",
                      "%2e%2e/%2e%2e/etc/passwd", "..\\..\\etc\\passwd", "....//....//etc/passwd"):  # fmt: skip
        for prefix in ("/gradio_api/file=", "/assets/", "/static/", "/gradio_api/", "/api/", "/"):
            yield prefix + traversal


def test_file_routes_refuse_system_index_audit_and_model_paths(
    client: TestClient, settings: Settings, engine: Engine
) -> None:
    engine.ask(QUESTIONS[0])  # the audit log exists
    folder = engine.index.folder
    secrets = ["/etc/passwd", str(folder / "chunks.sqlite"), str(folder / "manifest.json"), str(settings.audit),
               str(settings.docs / "NCA-annual-assessment-speech-2023-07-17.txt"), "/proc/self/environ"]  # fmt: skip
    secrets.append(str(engine.audit.key_path))
    sensitive = [b"root:", b"SQLite format", b"schema_version", b"Hostile countries", b"PATH=",
                 engine.audit.key_path.read_bytes()[:16]]  # fmt: skip
    for route in _file_routes(secrets):
        response = client.get(route)
        assert response.status_code in (400, 403, 404, 405), route
        assert not any(marker in response.content for marker in sensitive), route


def test_uploads_are_refused(client: TestClient) -> None:
    for size in (10, 100_000):  # the route is closed (404); a large body is refused before that (413)
        response = client.post("/gradio_api/upload", files={"files": ("big.txt", b"x" * size)})
        assert response.status_code in (404, 413)


# 4. auth on every route ---------------------------------------------------------------------------


def _routes(app: object, prefix: str = "") -> list[tuple[str, str]]:
    """(method, concrete path) for every route, including those of mounted apps (Gradio)."""
    found = []
    for route in app.routes:  # type: ignore[attr-defined]
        path = prefix + getattr(route, "path", "")
        if hasattr(route, "routes"):  # a Mount
            found += _routes(route, path)
            continue
        for method in sorted(getattr(route, "methods", None) or {"GET"}):
            if method not in ("HEAD", "OPTIONS"):
                concrete = path.replace(":path}", "}").replace("{", "x").replace("}", "") or "/"
                found.append((method, concrete))
    return found


@pytest.mark.parametrize("mode", ["token", "header"])
def test_every_route_needs_credentials(settings: Settings, engine: Engine, mode: str) -> None:
    changed = settings.model_copy(update={"auth": mode, "auth_token": "s3cret" * 4})
    app = create_app(changed, engine)
    client = TestClient(app)
    routes = [*_routes(app), ("GET", "/gradio_api/info"), ("GET", "/config"), ("POST", "/gradio_api/queue/join")]
    assert len(routes) > 20, "the gradio routes are included"
    for method, path in routes:
        response = client.request(method, path)
        assert response.status_code in (401, 403), f"{method} {path}: {response.status_code}"
    good = {"Authorization": "Bearer " + "s3cret" * 4} if mode == "token" else {"X-Forwarded-User": "analyst7"}
    assert client.get("/", headers=good).status_code == 200
    assert client.get("/api/health", headers=good).status_code == 200
    answer = client.post("/api/ask", json={"question": QUESTIONS[0]}, headers=good).json()
    record = AuditLog(settings.audit).get(answer["id"])
    assert record.user == ("analyst7" if mode == "header" else None)  # a shared token names no user


# 6. concurrency ---------------------------------------------------------------------------------


def _key(answer: dict) -> list[tuple]:
    return [(p["source"], p["start"], p["end"], p["score"]) for p in answer["passages"]] + [(answer["answered"],)]


def test_parallel_questions_match_sequential_ones(engine: Engine) -> None:
    asked = [QUESTIONS[i % len(QUESTIONS)] for i in range(200)]
    sequential = {q: _key(engine.ask(q).to_json()) for q in QUESTIONS}
    with ThreadPoolExecutor(max_workers=16) as pool:
        parallel = list(pool.map(lambda q: (q, _key(engine.ask(q).to_json())), asked))
    assert all(result == sequential[q] for q, result in parallel)
    assert AuditLog(engine.settings.audit).verify_chain().checked == 200 + len(QUESTIONS)


# 7. faults --------------------------------------------------------------------------------------


def test_rebuilds_while_answering_fail_no_request(settings: Settings, engine: Engine) -> None:
    client = TestClient(create_app(settings, engine))
    results: list[tuple[int, str, list[str]]] = []
    stop = threading.Event()

    def ask_until_stopped() -> None:
        while not stop.is_set():
            response = client.post("/api/ask", json={"question": "cocaine ransomware hospitals", "k": 5})
            body = response.json()
            results.append(
                (response.status_code, body.get("index_version", ""), [p["source"] for p in body["passages"]])
            )

    workers = [threading.Thread(target=ask_until_stopped) for _ in range(3)]
    for worker in workers:
        worker.start()
    versions = {engine.index.version: {"NCA-annual-assessment-speech-2023-07-17.txt"}}
    try:
        for i in range(4):
            (settings.docs / f"new-{i}.md").write_text(f"Ransomware hit {i} hospitals.\n", encoding="utf-8")
            report = build_index(settings.docs, settings.index, None, warn=lambda m: None)
            versions[report.version] = set(open_index(settings.index).manifest.documents)
    finally:
        stop.set()
        for worker in workers:
            worker.join()
    assert results and all(status == 200 for status, _, _ in results)
    for _, version, sources in results:
        assert version in versions, "each answer is tagged with one complete index version"
        assert set(sources) <= versions[version], "its passages come from that version's documents"
    assert len({version for _, version, _ in results}) > 1, "answers moved to the new versions"


# A full audit disk fails the question and loses no record: tests/test_audit_chain.py
# (test_a_full_disk_fails_the_question_and_loses_no_record, on the kept connection, and on a real tmpfs).


# 8. offline and egress --------------------------------------------------------------------------


def test_startup_makes_no_outbound_connection(
    settings: Settings, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    attempts: list[str] = []
    real_connect = socket.socket.connect

    def guarded(sock: socket.socket, address: object) -> None:
        host = address[0] if isinstance(address, tuple) else str(address)
        if not str(host).startswith(("127.", "::1", "/")) and host != "localhost":
            attempts.append(str(address))
            raise OSError("outbound connection blocked by the test")
        return real_connect(sock, address)

    def resolve(host: str, *args: object, **kwargs: object) -> list:
        attempts.append(f"dns:{host}")
        raise socket.gaierror("no DNS in this test")

    monkeypatch.setattr(socket.socket, "connect", guarded)
    monkeypatch.setattr(socket, "getaddrinfo", resolve)
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    hub_settings = settings.model_copy(update={"model": "acme/embedder"})
    engine = Engine.start(hub_settings, build="stale", log=lambda message: None)
    client = TestClient(create_app(hub_settings, engine))
    assert client.get("/").status_code == 200
    assert client.post("/api/ask", json={"question": QUESTIONS[0]}).json()["answered"]
    assert attempts == ["dns:huggingface.co"], "only the one quick hub check"
