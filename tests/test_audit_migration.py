"""Logs written by the code before keyed, lean records: read as they are, migrated on the first
append (or by `threatqa audit migrate`), and accepted by `audit verify` with their old checkpoints."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest

from old_audit import OLD_SCHEMA, old_record
from test_audit_chain import _edit_texts
from threatqa.audit import AuditLog, Checkpoint
from threatqa.cli import main
from threatqa.config import Settings
from threatqa.engine import Engine
from threatqa.errors import AuditError

QUESTIONS = ["How much money does serious organised crime generate in the UK each year?", "cocaine tonnes"]


def old_append(path: Path, seq: int, kind: str, question: str, payload: dict, user: str | None = None) -> str:
    conn = sqlite3.connect(path, isolation_level=None)
    conn.executescript(OLD_SCHEMA)
    rid, stamp = payload.get("id") or f"id{seq}", f"2026-01-01T00:00:{seq:02d}.000Z"
    digest = old_record(conn, kind, question, payload, user, "api", rid, stamp)
    conn.close()
    return digest


@pytest.fixture()
def old_log(settings: Settings, tmp_path: Path) -> tuple[Path, list[dict], Checkpoint]:
    """A log of three answers and a feedback, written the old way, with real answer payloads."""
    engine = Engine.start(settings.model_copy(update={"audit": tmp_path / "scratch.sqlite3"}), log=lambda m: None)
    path = tmp_path / "old" / "audit.sqlite3"
    path.parent.mkdir()
    payloads = []
    for seq, question in enumerate([*QUESTIONS, QUESTIONS[0]], start=1):
        answer = engine.ask(question, k=5)
        payloads.append(answer.to_json() | {"settings": {"k": 5, "documents": [], "mode": "lexical"}})
        digest = old_append(path, seq, "answer", question, payloads[-1], user="analyst7")
    payloads.append({"answer_id": payloads[0]["id"], "helpful": True})
    digest = old_append(path, 4, "feedback", QUESTIONS[0], payloads[-1])
    payloads.append({"passages": [{"odd": "a passage the lean form cannot hold"}], "extra": [1, 2.5, None]})
    digest = old_append(path, 5, "answer", "odd", payloads[-1])
    return path, payloads, Checkpoint(5, digest)


def test_an_old_log_reads_and_verifies_before_migration(old_log: tuple[Path, list[dict], Checkpoint]) -> None:
    path, payloads, checkpoint = old_log
    log = AuditLog(path)
    assert [r.payload for r in log.records()] == payloads
    report = log.verify_chain([checkpoint])
    assert report.ok and report.checked == 5 and not report.keyed and "before records had MACs" in report.notes[0]


def test_the_first_append_migrates_and_keeps_old_checkpoints(old_log: tuple[Path, list[dict], Checkpoint]) -> None:
    path, payloads, checkpoint = old_log
    before = path.stat().st_size
    log = AuditLog(path)
    log.append("answer", "new", {"passages": []})
    report = log.verify_chain([checkpoint])
    assert report.ok and report.checked == 6 and report.keyed
    assert [r.payload for r in log.records()][:5] == payloads and all(r.mac for r in log.records())
    conn = sqlite3.connect(path)
    lean = [lean for (lean,) in conn.execute("SELECT lean FROM records ORDER BY seq")]
    assert lean == [1, 1, 1, 1, 0, 1], "answers stored lean; the one that would not rebuild exactly stays whole"
    conn.close()
    assert log.migrate()[1] < before, "compacted after the texts moved out"
    assert log.verify_chain([checkpoint]).ok


def test_a_migrated_record_edited_is_caught(old_log: tuple[Path, list[dict], Checkpoint]) -> None:
    path, _, _ = old_log
    log = AuditLog(path)
    log.migrate()
    _edit_texts(path, "billion", "million")
    report = log.verify_chain()
    assert not report.ok and report.broken_seq == 1 and "altered" in report.reason


def test_an_unkeyed_log_beside_its_key_is_a_downgrade(old_log: tuple[Path, list[dict], Checkpoint]) -> None:
    path, _, _ = old_log
    AuditLog(path).key_path.write_text("cd" * 32)
    report = AuditLog(path).verify_chain()
    assert not report.ok and "no MACs although its key" in report.reason


def test_a_broken_old_log_is_not_migrated(old_log: tuple[Path, list[dict], Checkpoint]) -> None:
    path, _, _ = old_log
    conn = sqlite3.connect(path)
    conn.executescript("DROP TRIGGER records_no_update; UPDATE records SET question = 'forged' WHERE seq = 2")
    conn.close()
    with pytest.raises(AuditError, match="not migrated: its chain is broken at record 2"):
        AuditLog(path).append("answer", "new", {"passages": []})
    assert len(AuditLog(path).records()) == 5, "left as it was, as evidence"


def test_audit_migrate_command(old_log: tuple[Path, list[dict], Checkpoint], capsys: pytest.CaptureFixture) -> None:
    path, _, checkpoint = old_log
    assert main(["audit", "migrate", "--audit", str(path)]) == 0
    assert "5 records with MACs" in capsys.readouterr().out
    assert main(["audit", "verify", "--audit", str(path), "--checkpoint", str(checkpoint)]) == 0
