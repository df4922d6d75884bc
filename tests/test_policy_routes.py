"""Need-to-know over every route (issue 16): two users behind the portal's proxy (auth=header, groups
in X-Forwarded-Groups) each learn of the documents they may read and of nothing else, through the
JSON API, the permalink pages and files, Gradio's /ask and the chat page's own calls."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from threatqa.api import create_app
from threatqa.config import Settings
from threatqa.engine import Engine
from threatqa.policy import POLICY_FILE

RED = "Operation Scarlet: the red team tracked cocaine couriers through Felixstowe docks in 2023.\n"
BLUE = "Operation Azure: the blue team tracked cocaine couriers through Southampton docks in 2023.\n"
OPEN = "Public note: cocaine couriers use container ports, the agency says.\n"
POLICY = '[[rule]]\npaths = ["red/*"]\ngroups = ["red"]\n\n[[rule]]\npaths = ["blue/*"]\ngroups = ["blue"]\n\n' \
    '[[rule]]\npaths = ["public/*"]\ngroups = ["open"]\n'  # fmt: skip
QUESTION = "Which team tracked cocaine couriers through the docks?"
SECRETS = {"red": ("Scarlet", "Felixstowe", "red/scarlet.txt"), "blue": ("Azure", "Southampton", "blue/azure.txt")}


@pytest.fixture()
def client(tmp_path: Path) -> Iterator[TestClient]:
    docs = tmp_path / "docs"
    for path, text in (("red/scarlet.txt", RED), ("blue/azure.txt", BLUE), ("public/note.txt", OPEN)):
        (docs / path).parent.mkdir(parents=True, exist_ok=True)
        (docs / path).write_text(text, encoding="utf-8")
    (tmp_path / POLICY_FILE).write_text(POLICY, encoding="utf-8")
    settings = Settings.load(docs=docs, index=tmp_path / "index", audit=tmp_path / "audit.sqlite3", model="",
                             auth="header")  # fmt: skip
    engine = Engine.start(settings, build="missing", log=lambda message: None)
    with TestClient(create_app(settings, engine)) as client:
        yield client


def _as(team: str) -> dict[str, str]:
    return {"X-Forwarded-User": f"{team}-analyst", "X-Forwarded-Groups": team}


def _leaks(text: str, team: str) -> list[str]:
    """The other team's secrets found in `text`."""
    other = "blue" if team == "red" else "red"
    return [word for word in SECRETS[other] if word in text]


def _gradio_ask(client: TestClient, headers: dict[str, str], data: list[object]) -> str:
    event = client.post("/gradio_api/call/ask", json={"data": data}, headers=headers).json()["event_id"]
    return client.get(f"/gradio_api/call/ask/{event}", headers=headers).text


@pytest.mark.parametrize("team", ["red", "blue"])
def test_each_user_learns_of_their_documents_only(client: TestClient, team: str) -> None:
    me, other = _as(team), "blue" if team == "red" else "red"
    answer = client.post("/api/ask", json={"question": QUESTION, "k": 10}, headers=me).json()
    seen = [json.dumps(answer)]
    assert {p["source"] for p in answer["passages"]} <= {SECRETS[team][2], "public/note.txt"}
    assert SECRETS[team][0] in seen[0] and set(answer["searched"]) == {SECRETS[team][2], "public/note.txt"}
    documents = client.get("/api/documents", headers=me).json()
    assert {d["path"] for d in documents} == {SECRETS[team][2], "public/note.txt"}
    seen.append(json.dumps(documents))
    health = client.get("/api/health", headers=me).json()
    assert health["documents"] == 2  # counts of what this user may read
    # naming the other team's document is the same "unknown" as naming one that does not exist
    other_id = next(d["id"] for d in client.get("/api/documents", headers=_as(other)).json() if other in d["path"])
    for name in (SECRETS[other][2], other_id):
        refused = client.post("/api/ask", json={"question": QUESTION, "documents": [name]}, headers=me)
        missing = client.post("/api/ask", json={"question": QUESTION, "documents": ["no/such.txt"]}, headers=me)
        assert refused.status_code == missing.status_code == 422
        assert refused.json()["detail"].replace(repr(name), "X") == missing.json()["detail"].replace(
            "'no/such.txt'", "X"
        )
    # the other team's original file, by id, is not found, like a document that does not exist
    assert client.get(f"/api/documents/{other_id}/file", headers=me).status_code == 404
    # /api/verify does not read the other team's document, whatever the citation says
    probe = {"question": "q", "passages": [{"source": SECRETS[other][2], "start": 0, "end": 20, "text": "x"}]}
    verdict = client.post("/api/verify", json=probe, headers=me)
    assert verdict.json()["findings"][0]["status"] == "document_removed"  # it names only what was sent
    seen.append(_gradio_ask(client, me, [QUESTION, 10, None]))
    page = client.get("/", headers=me).text + client.get("/config", headers=me).text
    seen.append(page)  # the page and its config hold no document list (it fills in per user on load)
    leaks = [(i, leak) for i, text in enumerate(seen) for leak in _leaks(text, team)]
    assert not leaks


def test_an_answer_is_shown_only_to_users_who_may_read_what_it_cites(client: TestClient) -> None:
    red = client.post("/api/ask", json={"question": QUESTION}, headers=_as("red")).json()
    assert any(p["source"] == "red/scarlet.txt" for p in red["passages"])
    routes = [f"/answers/{red['id']}", f"/answers/{red['id']}.md", f"/answers/{red['id']}.json",
              f"/answers/{red['id']}/passages/1"]  # fmt: skip
    for route in routes:
        assert client.get(route, headers=_as("red")).status_code == 200, route
        refused = client.get(route, headers=_as("blue"))
        assert refused.status_code == 404 and "Scarlet" not in refused.text, route
        assert client.get(route, headers={"X-Forwarded-User": "no-groups"}).status_code == 404, route


def test_without_groups_only_open_documents(client: TestClient) -> None:
    nobody = {"X-Forwarded-User": "visitor"}
    answer = client.post("/api/ask", json={"question": QUESTION, "k": 10}, headers=nobody).json()
    assert {p["source"] for p in answer["passages"]} <= {"public/note.txt"}
    assert [d["path"] for d in client.get("/api/documents", headers=nobody).json()] == ["public/note.txt"]


def test_the_audit_log_names_the_user_their_groups_and_the_policy(client: TestClient) -> None:
    answer = client.post("/api/ask", json={"question": QUESTION}, headers=_as("red")).json()
    record = client.app.state.engine.audit.get(answer["id"])
    assert record.user == "red-analyst"
    assert record.payload["settings"]["groups"] == ["red"] and record.payload["settings"]["policy_version"]
