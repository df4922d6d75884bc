"""Logs written by earlier code (before keyed, lean records; keyed records with hexadecimal digests):
read as they are, migrated on the first append (or by `threatqa audit migrate`), and accepted by
`audit verify` with their old checkpoints."""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path

import pytest

from old_audit import KEYED_SCHEMA, OLD_SCHEMA, keyed_record, old_record
from test_audit_chain import ODD_PAYLOADS, _edit_texts
from threatqa.audit import AuditLog, Checkpoint
from threatqa.audit_chain import keyed_record_hash
from threatqa.audit_key import create_key, default_key_path
from threatqa.audit_store import unpack
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


def _scratch(settings: Settings, tmp_path: Path, name: str) -> tuple[Engine, Path]:
    """An engine answering into a scratch log, and the path of a log to write the old way (folder made)."""
    engine = Engine.start(settings.model_copy(update={"audit": tmp_path / "scratch.sqlite3"}), log=lambda m: None)
    path = tmp_path / name / "audit.sqlite3"
    path.parent.mkdir()
    return engine, path


@pytest.fixture()
def old_log(settings: Settings, tmp_path: Path) -> tuple[Path, list[dict], Checkpoint]:
    """A log of three answers and a feedback, written the old way, with real answer payloads."""
    engine, path = _scratch(settings, tmp_path, "old")
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
    assert lean == [2, 2, 2, 2, 0, 2], "answers stored lean; the one that would not rebuild exactly stays whole"
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


def _payloads(engine: Engine) -> list[tuple[str, str, dict]]:
    """Real answers (with copies of passages in other files), a feedback and odd payloads."""
    answers = []
    for question in [*QUESTIONS, QUESTIONS[0]]:
        answer = engine.ask(question, k=5)
        answers.append(("answer", question, answer.to_json() | {"settings": {"k": 5, "mode": "lexical"}}))
    answers.append(("feedback", QUESTIONS[0], {"answer_id": answers[0][2]["id"], "helpful": True}))
    odd = ("copies", "copies of their own", "hash not of the text")
    answers += [("answer", "odd", ODD_PAYLOADS[name]) for name in odd]
    return answers


@pytest.fixture()
def keyed_log(settings: Settings, tmp_path: Path) -> tuple[Path, list[dict], Checkpoint]:
    """A keyed log of layout 0 (hexadecimal digests, texts by name), as the code at aeb43bd wrote it."""
    engine, path = _scratch(settings, tmp_path, "keyed")
    key = create_key(default_key_path(path))
    conn = sqlite3.connect(path, isolation_level=None)
    conn.executescript(KEYED_SCHEMA)
    payloads = []
    for seq, (kind, question, payload) in enumerate(_payloads(engine), start=1):
        digest = keyed_record(conn, key, kind, question, payload, "analyst7", "api", f"id{seq}",
                              f"2026-01-01T00:00:{seq:02d}.000Z")  # fmt: skip
        payloads.append(json.loads(json.dumps(payload)))
    conn.close()
    return path, payloads, Checkpoint(len(payloads), digest)


def test_a_keyed_log_reads_and_verifies_before_migration(keyed_log: tuple[Path, list[dict], Checkpoint]) -> None:
    path, payloads, checkpoint = keyed_log
    log = AuditLog(path)
    assert [r.payload for r in log.records()] == payloads
    report = log.verify_chain([checkpoint])
    assert report.ok and report.keyed and report.checked == len(payloads)
    conn = sqlite3.connect(path)
    assert conn.execute("PRAGMA user_version").fetchone()[0] == 0, "reading leaves the log as it was"
    conn.close()


def test_a_keyed_log_is_migrated_with_its_hashes_and_macs(keyed_log: tuple[Path, list[dict], Checkpoint]) -> None:
    path, payloads, checkpoint = keyed_log
    before = [r.to_json() for r in AuditLog(path).records()]
    size = path.stat().st_size
    log = AuditLog(path)
    log.append("answer", QUESTIONS[1], {"passages": []})
    after = [r.to_json() for r in log.records()]
    assert after[: len(before)] == before, "every record as it was: payload, hash, link and MAC"
    report = log.verify_chain([checkpoint])
    assert report.ok and report.keyed and report.checked == len(payloads) + 1
    conn = sqlite3.connect(path)
    assert conn.execute("PRAGMA user_version").fetchone()[0] == 1
    assert [lean for (lean,) in conn.execute("SELECT lean FROM records ORDER BY seq")] == [2] * 6 + [0, 2]
    assert {type(h) for (h,) in conn.execute("SELECT hash FROM records")} == {bytes}
    texts = conn.execute("SELECT count(*) FROM texts").fetchone()[0]
    conn.close()
    assert log.migrate()[1] < size, "smaller once compacted"
    assert log.verify_chain([checkpoint]).ok
    engine_payload = before[0]["payload"]
    log.append("answer", QUESTIONS[0], engine_payload, record_id="again")  # the same texts as record 1
    conn = sqlite3.connect(path)
    assert conn.execute("SELECT count(*) FROM texts").fetchone()[0] == texts, "texts already there are not stored again"
    conn.close()
    assert log.get("again").payload == engine_payload and log.verify_chain([checkpoint]).ok


def test_a_keyed_log_edited_after_migration_is_caught(keyed_log: tuple[Path, list[dict], Checkpoint]) -> None:
    path, _, _ = keyed_log
    AuditLog(path).migrate()
    _edit_texts(path, "billion", "million")
    report = AuditLog(path).verify_chain()
    assert not report.ok and report.broken_seq == 1 and "altered" in report.reason


def test_a_forged_keyed_record_stays_caught_after_migration(keyed_log: tuple[Path, list[dict], Checkpoint]) -> None:
    """Migration keeps each record's MAC as it was: a record rewritten without the key is not vouched for."""
    path, _, _ = keyed_log
    conn = sqlite3.connect(path)
    conn.row_factory = sqlite3.Row
    conn.executescript("DROP TRIGGER records_no_update; UPDATE records SET user = 'mallory' WHERE seq = 4")
    prev = conn.execute("SELECT hash FROM records WHERE seq = 3").fetchone()[0]
    for row in conn.execute("SELECT * FROM records WHERE seq >= 4 ORDER BY seq").fetchall():
        fields = [row[k] for k in ("seq", "id", "time", "kind", "user", "channel", "question")]
        body = unpack(row["payload"]) if row["lean"] else row["payload"]
        digest = keyed_record_hash(*fields, bool(row["lean"]), body, prev)
        conn.execute("UPDATE records SET prev_hash = ?, hash = ? WHERE seq = ?", (prev, digest, row["seq"]))
        prev = digest
    conn.commit()
    conn.close()
    log = AuditLog(path)
    log.migrate()
    assert log.verify_chain(use_key=False).ok
    report = log.verify_chain()
    assert not report.ok and report.broken_seq == 4 and "MAC" in report.reason


def test_a_broken_keyed_log_is_not_migrated(keyed_log: tuple[Path, list[dict], Checkpoint]) -> None:
    path, payloads, _ = keyed_log
    conn = sqlite3.connect(path)
    conn.executescript("DROP TRIGGER texts_no_delete; DELETE FROM texts WHERE sha256 = (SELECT min(sha256) FROM texts)")
    conn.close()
    with pytest.raises(AuditError, match="not migrated: its chain is broken"):
        AuditLog(path).append("answer", "new", {"passages": []})
    conn = sqlite3.connect(path)
    assert conn.execute("PRAGMA user_version").fetchone()[0] == 0, "left as it was, as evidence"
    assert conn.execute("SELECT count(*) FROM records").fetchone()[0] == len(payloads)
    conn.close()
