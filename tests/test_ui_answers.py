"""Issue 14 without a browser: collapsed copies, the lead, clean text, exports, the answer routes,
feedback bound to the answer a message shows, history per user, gentle messages."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import gradio as gr
import pytest
from fastapi.testclient import TestClient

from conftest import CORPUS, CORPUS_FILE, report_docs
from formats import REPORT_WRITERS
from threatqa.answer import answer_from_json, format_markdown, lead, plain_text
from threatqa.api import Gate, create_app
from threatqa.config import Settings
from threatqa.engine import Engine
from threatqa.ui import EMPTY_TEXT, QUESTION_TEXT, _Handlers
from threatqa.ui_format import answer_links, format_answer

COCAINE = "How much cocaine is consumed in the United Kingdom every year?"
REPORT_FILES = {f"assessment.{suffix}" for suffix in REPORT_WRITERS}


@pytest.fixture(scope="module")
def report_settings(tmp_path_factory: pytest.TempPathFactory) -> Settings:
    """The shipped corpus plus one report in five formats (lexical mode), built once for the module."""
    root = tmp_path_factory.mktemp("report")
    docs = report_docs(root)
    return Settings.load(docs=docs, index=root / "index", audit=root / "audit.sqlite3", model="")


@pytest.fixture(scope="module")
def engine(report_settings: Settings) -> Engine:
    return Engine.start(report_settings, build="stale", log=lambda message: None)


def test_copies_collapse_into_one_passage_and_k_distinct_are_shown(engine: Engine) -> None:
    answer = engine.ask(COCAINE, 5)
    assert [p.rank for p in answer.passages] == [1, 2, 3, 4, 5]
    keys = {" ".join(p.shown.casefold().split()) for p in answer.passages}
    assert len(keys) == 5  # five different texts
    report = next(p for p in answer.passages if "117 tonnes" in p.text)
    assert {c.source for c in report.sources} == REPORT_FILES
    assert len({c.document_id for c in report.sources}) == 5
    as_json = answer.to_json()["passages"][report.rank - 1]
    assert {c["source"] for c in as_json["also_in"]} | {as_json["source"]} == REPORT_FILES
    assert answer_from_json(answer.to_json()) == answer  # what the audit log keeps gives the same answer back


def test_lead_quotes_the_best_sentences_exactly(engine: Engine) -> None:
    answer = engine.ask(COCAINE, 3)
    items = lead(answer)
    assert items and items[0].rank == 1
    for item in items:
        shown = " ".join(answer.passages[item.rank - 1].shown.split())
        assert item.text in shown  # a quote, never generated text
    assert "117 tonnes of cocaine" in " ".join(item.text for item in items)


def test_copy_text_and_markdown_export_are_clean(engine: Engine) -> None:
    answer = engine.ask(COCAINE, 3)
    text = plain_text(answer, "/answers/x")
    assert text.startswith(f"Q: {COCAINE}\n")
    assert not any(markup in text for markup in ("\\", "<mark>", "**", "&lt;"))
    assert "    National Strategic Assessment of Serious and Organised Crime 2023, 2023-07-17, paras 5-6 (" in text
    assert text.rstrip().endswith("Permalink: /answers/x")
    markdown = format_markdown(answer)
    assert markdown.startswith(f"# {COCAINE}\n\n> ") and "## [1]" in markdown
    assert all(f"({name})" in markdown for name in REPORT_FILES)


def test_a_filtered_reply_names_the_documents_searched(engine: Engine) -> None:
    only = [d.id for d in engine.documents() if d.path == "assessment.pdf"]
    answer = engine.ask(COCAINE, 2, only)
    assert answer.searched == ("assessment.pdf",)
    assert format_answer(answer, filtered=True).split("\n\n")[-2] == "Searched only: assessment\\.pdf"


def test_a_reply_names_its_answer_and_nothing_in_a_document_can(engine: Engine) -> None:
    answer = engine.ask(COCAINE, 2)
    reply = format_answer(answer)
    assert set(answer_links(reply)) == {answer.id}
    assert answer_links([{"type": "text", "text": reply}]) == answer_links(reply)  # whatever shape the chat sends
    forged = format_answer(answer_from_json(answer.to_json() | {"id": None, "question": "answers/" + "a" * 32}))
    assert answer_links(forged) == []  # document and question text are escaped: answers\/... is no link


def test_feedback_and_context_follow_the_message_not_the_position(engine: Engine, report_settings: Settings) -> None:
    handlers = _Handlers(engine, report_settings, Gate(1, 1))
    first = handlers.ask(COCAINE, [], [], None, None)
    handlers.ask("Which hostile states use organised crime groups?", first[0], first[1], None, None)
    handlers.cleared()  # the chat's Clear: the chat is empty, and nothing else is consulted
    third = handlers.ask("How many people are involved in serious organised crime?", [], [], None, None)
    reply = third[0][-1]
    handlers.feedback(gr.LikeData(None, {"index": 1, "value": reply["content"], "liked": False}), None)
    third_id = answer_links(reply["content"])[0]
    feedback = [r for r in engine.audit.records() if r.kind == "feedback" and r.question.startswith("How many")]
    assert [r.payload for r in feedback] == [{"answer_id": third_id, "helpful": False}]
    selected = handlers.select_reply(gr.SelectData(None, {"index": 1, "value": reply["content"]}), None)
    assert selected[0] == third_id
    assert selected[3] == engine.audit.get(third_id).payload["passages"][0]["reference"]
    assert selected[4].startswith("Q: How many people")  # "copy answer" copies this reply


def test_empty_and_too_long_questions_get_a_gentle_message(engine: Engine, report_settings: Settings) -> None:
    handlers = _Handlers(engine, report_settings, Gate(1, 1))
    empty = handlers.ask("   ", [], [], None, None)
    assert empty[7] == EMPTY_TEXT and empty[0] == gr.skip()
    long = handlers.ask("x" * (report_settings.max_question_chars + 1), [], [], None, None)
    assert "limit is" in long[7] and long[0] == gr.skip()


def test_history_is_per_user(engine: Engine, report_settings: Settings) -> None:
    changed = report_settings.model_copy(update={"auth": "header", "auth_header": "X-User"})
    handlers = _Handlers(engine, changed, Gate(1, 1))

    class Request:
        def __init__(self, user: str) -> None:
            self.headers = {"x-user": user}

    engine.ask(COCAINE, 2, user="alice", channel="ui")
    engine.ask("Which hostile states use organised crime groups?", 2, user="bob", channel="ui")
    alice = handlers.history(Request("alice"))[0]  # type: ignore[arg-type]
    assert [m["role"] for m in alice] == ["user", "assistant"]
    assert "cocaine" in alice[0]["content"] and "hostile" not in json.dumps(alice)
    carol = handlers.history(Request("carol"))  # type: ignore[arg-type]
    assert carol[0] == []
    assert carol[3].interactive is True and carol[3].placeholder == QUESTION_TEXT  # the box opens once filled


@pytest.fixture(scope="module")
def client(engine: Engine, report_settings: Settings) -> TestClient:
    return TestClient(create_app(report_settings, engine))


def test_permalink_exports_and_context_pages(client: TestClient) -> None:
    answer = client.post("/api/ask", json={"question": COCAINE, "k": 3}).json()
    page = client.get(f"/answers/{answer['id']}")
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
    assert page.text.count("verified: still in the document as cited") >= 7  # 5 copies + 2 other passages
    assert "<script>alert" not in page.text
    markdown = client.get(f"/answers/{answer['id']}.md")
    assert markdown.text.startswith(f"# {COCAINE}")
    exported = client.get(f"/answers/{answer['id']}.json").json()
    assert exported["passages"] == answer["passages"] and exported["audit"]["seq"] >= 1
    context = client.get(f"/answers/{answer['id']}/passages/1")
    assert context.status_code == 200 and '<mark id="passage">' in context.text
    for missing in ("/answers/" + "0" * 32, f"/answers/{answer['id']}.exe", f"/answers/{answer['id']}/passages/9"):
        assert client.get(missing).status_code == 404, missing


def test_original_files_by_document_id_only(client: TestClient, report_settings: Settings) -> None:
    documents = {d["path"]: d["id"] for d in client.get("/api/documents").json()}
    pdf = client.get(f"/api/documents/{documents['assessment.pdf']}/file")
    assert pdf.status_code == 200 and pdf.headers["content-type"] == "application/pdf"
    assert pdf.content == (report_settings.docs / "assessment.pdf").read_bytes()
    html = client.get(f"/api/documents/{documents['assessment.html']}/file")
    assert html.headers["content-type"].startswith("text/plain")  # a document's scripts never run here
    docx = client.get(f"/api/documents/{documents['assessment.docx']}/file")
    assert docx.headers["content-disposition"].startswith("attachment")
    for bad in ("assessment.pdf", "..%2F..%2Fetc%2Fpasswd", "0" * 16):
        assert client.get(f"/api/documents/{bad}/file").status_code == 404, bad


def test_answer_routes_are_behind_auth(engine: Engine, report_settings: Settings) -> None:
    changed = report_settings.model_copy(update={"auth": "token", "auth_token": "s3cret"})
    client = TestClient(create_app(changed, engine))
    answer_id = engine.ask(COCAINE, 1).id
    document = engine.documents()[0].id
    for path in (f"/answers/{answer_id}", f"/answers/{answer_id}.json", f"/api/documents/{document}/file"):
        assert client.get(path).status_code == 401, path
        assert client.get(path, headers={"Authorization": "Bearer s3cret"}).status_code == 200, path


def test_token_cookie_is_partitioned_over_https(engine: Engine, report_settings: Settings) -> None:
    changed = report_settings.model_copy(update={"auth": "token", "auth_token": "s3cret"})
    client = TestClient(create_app(changed, engine))
    cookie = client.get("/?token=s3cret", headers={"X-Forwarded-Proto": "https"}).headers["set-cookie"]
    assert "Secure" in cookie and "SameSite=None" in cookie and "Partitioned" in cookie
    plain = client.get("/?token=s3cret").headers["set-cookie"]
    assert "SameSite=Lax" in plain and "Partitioned" not in plain


def test_page_head_removes_the_token_from_the_address_bar(client: TestClient) -> None:
    page = client.get("/").text + (client.get("/config").json().get("head") or "")  # Gradio puts `head` in its config
    assert 'url.searchParams.delete("token")' in page and "history.replaceState" in page


def test_answers_from_restricted_documents_are_not_shown_to_requests_without_access(tmp_path: Path) -> None:
    from threatqa.policy import Access

    docs = tmp_path / "docs"
    docs.mkdir()
    shutil.copy(CORPUS / CORPUS_FILE, docs / CORPUS_FILE)
    REPORT_WRITERS["txt"](docs)
    (tmp_path / "threatqa-policy.toml").write_text(
        'default = "open"\n\n[[rule]]\npaths = ["assessment.*"]\ngroups = ["finance"]\n', encoding="utf-8"
    )
    settings = Settings.load(docs=docs, index=tmp_path / "index", audit=tmp_path / "audit.sqlite3", model="")
    engine = Engine.start(settings, build="stale", log=lambda message: None)
    restricted = engine.ask(COCAINE, 3, access=Access.of("fin", ["finance"]))
    assert "assessment.txt" in {c.source for p in restricted.passages for c in p.sources}
    client = TestClient(create_app(settings, engine))
    assert client.get(f"/answers/{restricted.id}").status_code == 404
    assert client.get(f"/answers/{restricted.id}/passages/1").status_code == 404
    report = next(d for d in engine.index.documents() if d.path == "assessment.txt")
    assert client.get(f"/api/documents/{report.id}/file").status_code == 404
    handlers = _Handlers(engine, settings, Gate(1, 1))
    forged = gr.SelectData(None, {"index": 1, "value": f"answers/{restricted.id}"})
    assert handlers.select_reply(forged, None)[0] == ""
    open_answer = engine.ask("How many people are involved in serious organised crime in the UK?", 2)
    assert client.get(f"/answers/{open_answer.id}").status_code == 200
