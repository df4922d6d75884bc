"""Need-to-know over every route (issue 16): two users behind the portal's proxy (auth=header, groups
in X-Forwarded-Groups) each learn of the documents they may read and of nothing else, through the
JSON API, the permalink pages and files, the audit export, re-indexing, Gradio's /ask and the chat
page's own calls; roles (X-Forwarded-Roles, or a personal token's) open the auditor's and the
admin's routes to them only."""

from __future__ import annotations

import csv
import io
import json
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from threatqa.api import create_app
from threatqa.auth import add_token
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
def client_for(tmp_path: Path) -> Iterator[Callable[..., TestClient]]:
    """A TestClient over the red, blue and public documents, for the app built with these settings."""
    docs = tmp_path / "docs"
    for path, text in (("red/scarlet.txt", RED), ("blue/azure.txt", BLUE), ("public/note.txt", OPEN)):
        (docs / path).parent.mkdir(parents=True, exist_ok=True)
        (docs / path).write_text(text, encoding="utf-8")
    (tmp_path / POLICY_FILE).write_text(POLICY, encoding="utf-8")
    settings = Settings.load(docs=docs, index=tmp_path / "index", audit=tmp_path / "audit.sqlite3", model="")
    engine = Engine.start(settings, build="missing", log=lambda message: None)
    clients: list[TestClient] = []

    def make(**changes: object) -> TestClient:
        clients.append(TestClient(create_app(settings.model_copy(update=changes), engine)).__enter__())
        return clients[-1]

    yield make
    for made in clients:
        made.__exit__(None, None, None)


@pytest.fixture()
def client(client_for: Callable[..., TestClient]) -> TestClient:
    return client_for(auth="header")


def _as(team: str, roles: str = "") -> dict[str, str]:
    return {"X-Forwarded-User": f"{team}-analyst", "X-Forwarded-Groups": team} | (
        {"X-Forwarded-Roles": roles} if roles else {}
    )


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
    theirs = client.post("/api/ask", json={"question": QUESTION, "k": 10}, headers=_as(other)).json()
    assert SECRETS[other][0] in json.dumps(theirs)  # the log holds the other team's answer: it must not reach me
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
    # the audit export gives a reader their own records; asking for the other's, or re-indexing, is refused
    for form in ("json", "csv"):
        export = client.get(f"/api/audit/export?format={form}", headers=me)
        assert export.status_code == 200
        seen.append(export.text)
    assert {r["user"] for r in client.get("/api/audit/export", headers=me).json()} == {f"{team}-analyst"}
    refused = client.get(f"/api/audit/export?user={other}-analyst", headers=me)
    assert refused.status_code == 403
    reindex = client.post("/api/reindex", headers=me)
    assert reindex.status_code == 403
    seen += [refused.text, reindex.text, client.get(f"/answers/{theirs['id']}.json", headers=me).text]
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


def test_an_auditor_exports_every_record_a_reader_their_own(client: TestClient) -> None:
    for team in ("red", "blue", "red"):
        client.post("/api/ask", json={"question": QUESTION}, headers=_as(team))
    auditor = _as("audit", roles="auditor")  # in no team's group: the log is theirs to read all the same
    every = client.get("/api/audit/export", headers=auditor).json()
    assert [r["user"] for r in every] == ["red-analyst", "blue-analyst", "red-analyst"]
    assert [r["seq"] for r in client.get("/api/audit/export?range=2:", headers=auditor).json()] == [2, 3]
    one = client.get("/api/audit/export?user=blue-analyst&format=csv", headers=auditor)
    assert one.headers["content-type"].startswith("text/csv")
    assert {row["user"] for row in csv.DictReader(io.StringIO(one.text))} == {"blue-analyst"}
    mine = client.get("/api/audit/export", headers=_as("red")).json()
    assert [r["seq"] for r in mine] == [1, 3]
    own = client.get("/api/audit/export?user=red-analyst", headers=_as("red"))
    assert own.status_code == 200 and len(own.json()) == 2
    bad = client.get("/api/audit/export?range=a:b", headers=auditor)
    assert bad.status_code == 422 and "FIRST:LAST" in bad.json()["detail"]
    unknown = client.get("/api/audit/export?format=xml", headers=auditor)
    assert unknown.status_code == 422
    # roles the portal knows and we do not are no roles here
    portal = client.get("/api/audit/export", headers=_as("red", roles="portal-auditor,superuser"))
    assert [r["seq"] for r in portal.json()] == [1, 3]


def test_only_an_admin_reindexes(client: TestClient, tmp_path: Path) -> None:
    for roles in ("", "reader", "auditor", "reader,auditor"):
        refused = client.post("/api/reindex", headers=_as("red", roles=roles))
        assert refused.status_code == 403, roles
        assert refused.json()["detail"].startswith("re-indexing needs the admin role; you have: ")
    (tmp_path / "docs" / "red" / "crimson.txt").write_text("Operation Crimson: couriers at Tilbury.\n")
    admin = _as("ops", roles="admin")  # an admin in no team's group: counts, never paths
    done = client.post("/api/reindex", headers=admin)
    assert done.status_code == 200
    body = done.json()
    assert body["added"] == 1 and body["documents"] == 4 and body["changed"] is True
    assert "crimson" not in done.text.lower() and "red/" not in done.text
    # the engine answers from the new version at once, for those who may read it
    assert "red/crimson.txt" in {d["path"] for d in client.get("/api/documents", headers=_as("red")).json()}
    assert "red/crimson.txt" not in {d["path"] for d in client.get("/api/documents", headers=_as("blue")).json()}
    assert client.post("/api/reindex", headers=admin).json()["changed"] is False


def test_an_auditor_opens_and_verifies_any_answer_but_reads_no_document(client: TestClient) -> None:
    red = client.post("/api/ask", json={"question": QUESTION}, headers=_as("red")).json()
    auditor = _as("audit", roles="auditor")
    for route in (f"/answers/{red['id']}", f"/answers/{red['id']}.md", f"/answers/{red['id']}.json"):
        assert client.get(route, headers=auditor).status_code == 200, route
        assert client.get(route, headers=_as("blue")).status_code == 404, route
    page = client.get(f"/answers/{red['id']}", headers=auditor).text
    assert "Scarlet" in page and "verified" in page.lower()
    # the whole document around a passage, and the original file, stay with the document's readers
    assert client.get(f"/answers/{red['id']}/passages/1", headers=auditor).status_code == 404
    red_id = next(p["document_id"] for p in red["passages"] if p["source"] == "red/scarlet.txt")
    assert client.get(f"/api/documents/{red_id}/file", headers=auditor).status_code == 404
    assert "red/scarlet.txt" not in client.get("/api/documents", headers=auditor).text
    checked = client.post("/api/verify", json=red, headers=auditor).json()
    assert checked["ok"] is True
    blue = client.post("/api/verify", json=red, headers=_as("blue")).json()
    assert blue["ok"] is False and "Scarlet" not in json.dumps(blue["findings"][0]["detail"])


def test_personal_tokens_name_the_user_in_the_audit_log(client_for: Callable[..., TestClient], tmp_path: Path) -> None:
    tokens = tmp_path / "tokens.toml"
    alice = add_token(tokens, "alice", ["red"])
    client = client_for(auth="token", auth_token="shared", auth_tokens=str(tokens))
    bearer = {"Authorization": f"Bearer {alice}"}
    answer = client.post("/api/ask", json={"question": QUESTION, "k": 10}, headers=bearer).json()
    assert {p["source"] for p in answer["passages"]} <= {"red/scarlet.txt", "public/note.txt"}
    record = client.app.state.engine.audit.get(answer["id"])
    assert record.user == "alice" and record.payload["settings"]["groups"] == ["red"]
    assert [r["user"] for r in client.get("/api/audit/export", headers=bearer).json()] == ["alice"]
    # a browser opens ?token= once; the cookie then says who it is, on that request and on later ones
    first = client.get(f"/api/documents?token={alice}")
    assert "red/scarlet.txt" in first.text and "HttpOnly" in first.headers["set-cookie"]
    assert "red/scarlet.txt" in client.get("/api/documents").text
    _gradio_ask(client, {}, [QUESTION, 10, None])  # the chat's own calls carry the cookie too
    assert client.app.state.engine.audit.records()[-1].user == "alice"
    client.cookies.clear()
    # the static token still works: a user without a name, reading what is open to all, with no records
    shared = {"Authorization": "Bearer shared"}
    assert [d["path"] for d in client.get("/api/documents", headers=shared).json()] == ["public/note.txt"]
    refused = client.get("/api/audit/export", headers=shared)
    assert refused.status_code == 403 and "signed-in user" in refused.json()["detail"]
    assert client.get("/api/health", headers={"Authorization": "Bearer nobody"}).status_code == 401
    # a token added while the server runs works from the next request; its roles apply
    admin = add_token(tokens, "root", roles=["admin"])
    assert client.post("/api/reindex", headers={"Authorization": f"Bearer {admin}"}).status_code == 200
    assert client.post("/api/reindex", headers=bearer).status_code == 403
