"""Need-to-know labels in citations (issue 16): every citation names who may read its document and the
policy version that said so, in the JSON (API, CLI, audit log), the exports and the UI; answers without a
policy, and answers logged before labels existed, carry none."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient

from conftest import write_docs
from threatqa.answer import answer_from_json, format_markdown, format_text, plain_text
from threatqa.api import create_app
from threatqa.cli import main
from threatqa.config import Settings
from threatqa.engine import Engine
from threatqa.policy import POLICY_FILE, Access
from threatqa.ui_format import format_answer
from threatqa.ui_pages import answer_page

RED = "Operation Scarlet: the red team tracked cocaine couriers through Felixstowe docks in 2023.\n"
# the same text in two files under different labels: one passage citing both, each with its own label
SHARED = "Joint note: cocaine couriers switched to smaller boats along the east coast in 2023.\n"
OPEN = "Public note: cocaine couriers use container ports, the agency says.\n"
POLICY = '[[rule]]\npaths = ["red/*"]\ngroups = ["red"]\n\n[[rule]]\npaths = ["joint/*"]\ngroups = ["red", "audit"]\n' \
    '\n[[rule]]\npaths = ["public/*"]\ngroups = ["open"]\n'  # fmt: skip
FILES = {"red/scarlet.txt": RED, "red/boats.txt": SHARED, "joint/boats.txt": SHARED, "public/note.txt": OPEN}
QUESTION = "Which team tracked cocaine couriers through the docks?"
RED_ANALYST = Access.of("red-analyst", ["red"])


def _folder(root: Path, policy: str | None) -> Settings:
    docs = write_docs(root, FILES, policy)
    return Settings.load(docs=docs, index=root / "index", audit=root / "audit.sqlite3", model="", auth="header")


@pytest.fixture()
def engine(tmp_path: Path) -> Engine:
    return Engine.start(_folder(tmp_path, POLICY), build="missing", log=lambda message: None)


def _by_source(answer: Any) -> dict[str, Any]:
    return {cite.source: cite for passage in answer.passages for cite in passage.sources}


def test_citations_carry_their_documents_label_and_the_policy_version(engine: Engine) -> None:
    answer = engine.ask("cocaine couriers", k=10, access=RED_ANALYST)
    version = engine.labels().policy.version  # type: ignore[union-attr]
    cites = _by_source(answer)
    assert set(cites) == set(FILES)  # every file, the two copies of one text included
    assert {source: cite.label for source, cite in cites.items()} == {
        "red/scarlet.txt": ("red",), "red/boats.txt": ("red",), "joint/boats.txt": ("audit", "red"),
        "public/note.txt": ("open",),
    }  # fmt: skip
    assert {cite.policy_version for cite in cites.values()} == {version} and answer.policy_version == version
    assert engine.audit.get(answer.id).payload["settings"]["policy_version"] == version  # type: ignore[arg-type]


def test_labels_and_version_reach_the_json_and_come_back_from_the_audit_log(engine: Engine) -> None:
    answer = engine.ask("cocaine couriers", k=10, access=RED_ANALYST)
    data = answer.to_json()
    shared = next(p for p in data["passages"] if p["also_in"])
    assert {shared["source"]: shared["label"]} | {c["source"]: c["label"] for c in shared["also_in"]} == {
        "red/boats.txt": ["red"], "joint/boats.txt": ["audit", "red"],
    }  # fmt: skip
    assert data["policy_version"] == answer.policy_version and shared["also_in"][0]["policy_version"]
    logged = engine.logged_answer(answer.id, RED_ANALYST)  # type: ignore[arg-type]
    assert logged is not None and logged[0] == answer  # labels survive the (lean) audit record
    assert json.loads(json.dumps(data)) == data  # plain JSON: lists, not tuples


def test_exports_and_the_ui_show_the_handling_label(engine: Engine) -> None:
    answer = engine.ask(QUESTION, k=1, access=RED_ANALYST)
    assert answer.passages[0].citation.source == "red/scarlet.txt"
    line = "Scarlet, undated, para 1"  # the title is the file name
    assert f"- {line} (red/scarlet.txt); handling: red, characters" in format_markdown(answer)
    assert f"    {line} (red/scarlet.txt); handling: red\n" in plain_text(answer)
    assert format_text(answer).split("\n")[3].endswith(" · handling: red")
    assert " · para 1 · handling: red · *best match*" in format_answer(answer)
    page = answer_page(answer, "now", "red-analyst", {}, "")
    assert '<span class="handling">handling: red</span>' in page
    assert f"policy {answer.policy_version[:12]}" in page  # type: ignore[index]


def test_a_policy_change_is_in_the_next_answers_citations(engine: Engine, tmp_path: Path) -> None:
    before = engine.ask(QUESTION, k=1, access=RED_ANALYST)
    (tmp_path / POLICY_FILE).write_text(POLICY.replace('groups = ["red"]', 'groups = ["red", "gold"]'), "utf-8")
    after = engine.ask(QUESTION, k=1, access=RED_ANALYST)
    assert before.passages[0].citation.label == ("red",) and after.passages[0].citation.label == ("gold", "red")
    assert after.policy_version != before.policy_version
    assert after.passages[0].citation.policy_version == after.policy_version


def test_without_a_policy_citations_carry_no_label(tmp_path: Path) -> None:
    engine = Engine.start(_folder(tmp_path, None), build="missing", log=lambda message: None)
    answer = engine.ask(QUESTION, k=3)
    cites = [cite for passage in answer.passages for cite in passage.sources]
    assert cites and all(cite.label is None and cite.policy_version is None for cite in cites)
    assert answer.policy_version is None and "handling" not in format_markdown(answer) + format_answer(answer)
    assert answer.to_json()["passages"][0]["label"] is None


def _without_labels(data: dict[str, Any]) -> dict[str, Any]:
    """An answer object as logged before citations carried labels."""
    passages = [
        {k: v for k, v in p.items() if k not in ("label", "policy_version")}
        | {"also_in": [{k: v for k, v in c.items() if k not in ("label", "policy_version")} for c in p["also_in"]]}
        for p in data["passages"]
    ]
    return {k: v for k, v in data.items() if k != "policy_version"} | {"passages": passages}


def test_answers_logged_before_labels_still_load_verify_and_show(engine: Engine) -> None:
    new = engine.ask("cocaine couriers", k=10, access=RED_ANALYST)
    old = _without_labels(new.to_json() | {"id": None})
    assert "label" not in json.dumps(old)
    assert all(c.label is None and c.policy_version is None for c in _by_source(answer_from_json(old)).values())
    engine.audit.append("answer", old["question"], old, user="red-analyst", channel="ui")  # as an older server did
    record = engine.audit.records()[-1]
    assert engine.audit.verify_chain().ok
    loaded = engine.logged_answer(record.id, RED_ANALYST)
    assert loaded is not None
    cites = _by_source(loaded[0])
    assert set(cites) == set(FILES) and all(c.label is None and c.policy_version is None for c in cites.values())
    assert loaded[0].policy_version is None and "handling" not in format_answer(loaded[0])
    assert [p.text for p in loaded[0].passages] == [p.text for p in new.passages]


@pytest.fixture()
def client(engine: Engine) -> Iterator[TestClient]:
    with TestClient(create_app(engine.settings, engine)) as client:
        yield client


def test_api_answer_routes_carry_the_label(client: TestClient) -> None:
    me = {"X-Forwarded-User": "red-analyst", "X-Forwarded-Groups": "red"}
    asked = client.post("/api/ask", json={"question": QUESTION, "k": 1}, headers=me).json()
    assert asked["passages"][0]["label"] == ["red"] and len(asked["passages"][0]["policy_version"]) == 64
    exported = client.get(f"/answers/{asked['id']}.json", headers=me).json()
    assert exported["passages"][0]["label"] == ["red"] and exported["policy_version"] == asked["policy_version"]
    assert "(red/scarlet.txt); handling: red," in client.get(f"/answers/{asked['id']}.md", headers=me).text
    assert "handling: red" in client.get(f"/answers/{asked['id']}", headers=me).text
    assert "handling: red" in client.get(f"/answers/{asked['id']}/passages/1", headers=me).text


def test_cli_json_carries_the_label(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: Any) -> None:
    settings = _folder(tmp_path, POLICY)
    monkeypatch.setenv("THREATQA_MODEL", "")
    monkeypatch.setenv("THREATQA_AUDIT", str(tmp_path / "audit.sqlite3"))
    args = ["ask", "--docs", str(settings.docs), "--index", str(tmp_path / "index"), "--json", "container ports"]
    assert main(args) == 0
    answer = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert [(p["source"], p["label"]) for p in answer["passages"]] == [("public/note.txt", ["open"])]  # no access
    assert answer["policy_version"] and answer["passages"][0]["policy_version"] == answer["policy_version"]
