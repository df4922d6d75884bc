"""Audit: citations verified against documents, hash chain, write failures, replay, export."""

from __future__ import annotations

import csv
import io
import json
import sqlite3
from pathlib import Path

import pytest

from conftest import SWAP_RECORDS_2_AND_3, immutable, tamper_audit
from threatqa.audit import AuditLog
from threatqa.cli import main
from threatqa.config import Settings
from threatqa.engine import Engine
from threatqa.errors import AuditError
from threatqa.verify import compare_answers, verify_answers

CORPUS_FILE = "NCA-annual-assessment-speech-2023-07-17.txt"
QUESTION = "How much money does serious organised crime generate in the UK each year?"


@pytest.fixture()
def engine(settings: Settings) -> Engine:
    return Engine.start(settings, build="missing", log=lambda m: None)


def _statuses(answer: dict, docs: Path) -> set[str]:
    return {finding.status for finding in verify_answers([answer], docs)}


def test_fresh_answers_verify(engine: Engine, settings: Settings) -> None:
    answer = engine.ask(QUESTION).to_json()
    findings = verify_answers([answer], settings.docs)
    assert len(findings) == len(answer["passages"]) and all(f.ok for f in findings)


def test_edited_document_is_detected(engine: Engine, settings: Settings) -> None:
    answer = engine.ask(QUESTION).to_json()
    path = settings.docs / CORPUS_FILE
    path.write_text(path.read_text(encoding="utf-8").replace("£12 billion", "£14 billion"), encoding="utf-8")
    findings = verify_answers([answer], settings.docs)
    assert {f.status for f in findings} == {"document_edited"}
    top = findings[0]
    assert "quote is gone" in top.detail and "12 billion" in answer["passages"][0]["text"]


def test_moved_and_removed_documents_are_detected(engine: Engine, settings: Settings) -> None:
    answer = engine.ask(QUESTION).to_json()
    (settings.docs / "archive").mkdir()
    (settings.docs / CORPUS_FILE).rename(settings.docs / "archive" / CORPUS_FILE)
    findings = verify_answers([answer], settings.docs)
    assert {f.status for f in findings} == {"document_moved"} and "archive/" in findings[0].detail
    (settings.docs / "archive" / CORPUS_FILE).unlink()
    assert _statuses(answer, settings.docs) == {"document_removed"}


def test_changed_passage_text_is_detected(engine: Engine, settings: Settings) -> None:
    answer = engine.ask(QUESTION).to_json()
    forged = json.loads(json.dumps(answer))
    forged["passages"][0]["text"] = forged["passages"][0]["text"].replace("12", "13")
    assert "passage_differs" in _statuses(forged, settings.docs)
    forged["passages"][0]["passage_sha256"] = (
        __import__("hashlib").sha256(forged["passages"][0]["text"].encode()).hexdigest()
    )
    assert "passage_differs" in _statuses(forged, settings.docs), "a consistent forgery is still caught"


def test_verify_command_exit_codes(engine: Engine, settings: Settings, tmp_path: Path) -> None:
    saved = tmp_path / "answer.json"
    saved.write_text(json.dumps(engine.ask(QUESTION).to_json()), encoding="utf-8")
    docs = str(settings.docs)
    assert main(["verify", "--docs", docs, str(saved)]) == 0
    assert main(["verify", "--docs", docs, "--audit", str(settings.audit), "--range", "1:"]) == 0
    path = settings.docs / CORPUS_FILE
    path.write_text(path.read_text(encoding="utf-8") + "\nAppended.\n", encoding="utf-8")
    assert main(["verify", "--docs", docs, str(saved)]) == 1


def test_log_refuses_updates_through_sqlite(log: AuditLog) -> None:
    conn = sqlite3.connect(log.path)
    with pytest.raises(sqlite3.DatabaseError, match="append-only"):
        conn.execute("UPDATE records SET question = 'x' WHERE seq = 2")
    with pytest.raises(sqlite3.DatabaseError, match="append-only"):
        conn.execute("DELETE FROM records WHERE seq = 2")


def test_chain_detects_an_edited_record(log: AuditLog) -> None:
    tamper_audit(log.path, "UPDATE records SET question = 'forged' WHERE seq = 3")
    report = log.verify_chain()
    assert not report.ok and report.broken_seq == 3 and "edited" in report.reason


def test_chain_detects_a_deleted_record(log: AuditLog) -> None:
    tamper_audit(log.path, "DELETE FROM records WHERE seq = 2")
    report = log.verify_chain()
    assert not report.ok and report.broken_seq == 3 and "deleted" in report.reason


def test_chain_detects_reordered_records(log: AuditLog) -> None:
    tamper_audit(log.path, *SWAP_RECORDS_2_AND_3)
    report = log.verify_chain()
    assert not report.ok and report.broken_seq == 2


def test_audit_verify_command_names_the_broken_record(log: AuditLog, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["audit", "verify", "--audit", str(log.path)]) == 0
    tamper_audit(log.path, "UPDATE records SET user = 'mallory' WHERE seq = 2")
    assert main(["audit", "verify", "--audit", str(log.path)]) == 1
    assert "broken at record 2" in capsys.readouterr().out


def test_read_only_log_fails_the_request_and_keeps_the_records(engine: Engine, settings: Settings) -> None:
    engine.ask(QUESTION)
    with immutable(settings.audit), pytest.raises(AuditError, match=str(settings.audit)):
        engine.ask(QUESTION)
    assert [r.question for r in AuditLog(settings.audit).records()] == [QUESTION]
    assert AuditLog(settings.audit).verify_chain().ok


def test_unwritable_log_location_fails_visibly(settings: Settings, capsys: pytest.CaptureFixture[str]) -> None:
    blocker = settings.audit.parent / "blocker"
    blocker.write_text("a file where a folder should be")
    bad = settings.model_copy(update={"audit": blocker / "audit.sqlite3"})
    engine = Engine.start(bad, build="missing", log=lambda m: None)
    with pytest.raises(AuditError, match="cannot be opened"):
        engine.ask(QUESTION)
    args = ["ask", "--docs", str(bad.docs), "--index", str(bad.index), "--audit", str(bad.audit), "--json", QUESTION]
    assert main(args) == 1
    captured = capsys.readouterr()
    assert captured.out == "" and "audit log" in captured.err


def test_records_hold_user_settings_and_feedback(engine: Engine) -> None:
    answer = engine.ask(QUESTION, k=2, user="analyst7", channel="api")
    engine.feedback(answer.id, helpful=False, user="analyst7")
    answer_record, feedback = AuditLog(engine.settings.audit).records()
    assert (answer_record.id, answer_record.user, answer_record.channel) == (answer.id, "analyst7", "api")
    payload = answer_record.payload
    assert payload["settings"]["k"] == 2 and payload["index_version"] == engine.index.version
    assert [p["passage_sha256"] for p in payload["passages"]] == [p.citation.passage_sha256 for p in answer.passages]
    assert feedback.kind == "feedback" and feedback.question == QUESTION
    assert feedback.payload == {"answer_id": answer.id, "helpful": False}


def test_replay_unchanged_then_changed(engine: Engine, settings: Settings, capsys: pytest.CaptureFixture[str]) -> None:
    answer = engine.ask(QUESTION).to_json()
    again = Engine.start(settings, build="never", log=lambda m: None).ask(QUESTION).to_json()
    assert {row.status for row in compare_answers(answer, again)} == {"unchanged"}

    path = settings.docs / CORPUS_FILE
    path.write_text(path.read_text(encoding="utf-8").replace("£12 billion", "£14 billion"), encoding="utf-8")
    assert main(["index", "--docs", str(settings.docs), "--index", str(settings.index)]) == 0
    capsys.readouterr()
    base = ["--docs", str(settings.docs), "--index", str(settings.index), "--audit", str(settings.audit)]
    assert main(["audit", "replay", *base, answer["id"]]) == 0
    out = capsys.readouterr().out
    assert "gone" in out and "new" in out and "unchanged" in out
    after = Engine.start(settings, build="never", log=lambda m: None).ask(QUESTION).to_json()
    statuses = [row.status for row in compare_answers(answer, after)]
    assert "gone" in statuses and "new" in statuses


def test_export_json_and_csv(engine: Engine, settings: Settings, capsys: pytest.CaptureFixture[str]) -> None:
    answer = engine.ask(QUESTION, k=2)
    engine.feedback(answer.id, helpful=True)
    audit = ["--audit", str(settings.audit)]
    assert main(["audit", "export", *audit, "--range", "1:2"]) == 0
    exported = json.loads(capsys.readouterr().out)
    assert [r["kind"] for r in exported] == ["answer", "feedback"] and exported[0]["hash"]
    assert main(["audit", "export", *audit, "--format", "csv"]) == 0
    rows = list(csv.DictReader(io.StringIO(capsys.readouterr().out)))
    assert [r["kind"] for r in rows] == ["answer", "answer", "feedback"]
    assert rows[0]["reference"].startswith("NCA annual assessment speech 2023-07-17, 2023-07-17, para")
    assert rows[2]["helpful"] == "True"
