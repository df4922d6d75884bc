"""Audit chain that cannot be rewritten undetected: MACs under a key kept apart, checkpoints, lean
records whose texts the chain covers, one kept connection shared by threads, health check."""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import random
import re
import sqlite3
import subprocess
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from conftest import SWAP_RECORDS_2_AND_3, immutable, tamper_audit
from threatqa.audit import AuditLog, Checkpoint
from threatqa.audit_chain import keyed_record_hash, stored_body
from threatqa.audit_key import read_key, record_mac
from threatqa.audit_lean import compact, decode, encode, expand, sha256_text
from threatqa.audit_store import BODY_CODEC, Texts, key_of, pack, to_blob, to_hex, unpack
from threatqa.cli import main
from threatqa.config import Settings
from threatqa.engine import Engine
from threatqa.errors import AuditError

QUESTION = "How much money does serious organised crime generate in the UK each year?"


def _rehash(path: Path, first: int, key: bytes | None = None) -> None:
    """Recompute every chain hash from record `first` on (and the MACs, when the forger has the key)."""
    conn = sqlite3.connect(path)
    conn.row_factory = sqlite3.Row
    rows = conn.execute("SELECT * FROM records ORDER BY seq").fetchall()
    prev = to_hex(rows[first - 2]["hash"]) if first > 1 else "0" * 64
    for row in rows[first - 1 :]:
        fields = [row[k] for k in ("seq", "id", "time", "kind", "user", "channel", "question")]
        digest = keyed_record_hash(*fields, bool(row["lean"]), stored_body(row, Texts(conn)), prev)
        mac = to_blob(record_mac(key, digest)) if key else row["mac"]
        values = (to_blob(prev), to_blob(digest), mac, row["seq"])
        conn.execute("UPDATE records SET prev_hash = ?, hash = ?, mac = ? WHERE seq = ?", values)
        prev = digest
    conn.commit()
    conn.close()


def test_edit_with_recomputed_hashes_is_caught_by_the_mac(log: AuditLog) -> None:
    tamper_audit(log.path, "UPDATE records SET question = 'forged' WHERE seq = 2")
    _rehash(log.path, 2)
    assert log.verify_chain(use_key=False).ok, "the plain hash chain alone is fooled"
    report = log.verify_chain()
    assert not report.ok and report.broken_seq == 2 and "MAC" in report.reason


def test_reorder_with_recomputed_hashes_is_caught(log: AuditLog) -> None:
    tamper_audit(log.path, *SWAP_RECORDS_2_AND_3)
    assert log.verify_chain().broken_seq == 2
    _rehash(log.path, 2)
    report = log.verify_chain()
    assert not report.ok and report.broken_seq == 2 and "MAC" in report.reason


def test_deleting_the_last_records_is_caught_by_a_checkpoint(log: AuditLog) -> None:
    checkpoint = log.verify_chain().head
    assert checkpoint.seq == 4
    tamper_audit(log.path, "DELETE FROM records WHERE seq >= 3")
    assert log.verify_chain().ok, "a shorter chain is still a chain"
    report = log.verify_chain([checkpoint])
    assert not report.ok and report.broken_seq == 4 and "deleted" in report.reason and report.head.seq == 2


def test_a_rewrite_by_the_key_holder_is_caught_by_a_checkpoint(log: AuditLog) -> None:
    checkpoint = Checkpoint.parse(str(log.verify_chain().head))
    log.append("answer", "later", {"passages": []})
    tamper_audit(log.path, "UPDATE records SET user = 'mallory' WHERE seq = 2")
    _rehash(log.path, 2, read_key(log.key_path))
    assert log.verify_chain().ok, "hashes and MACs recomputed with the key"
    report = log.verify_chain([checkpoint])
    assert not report.ok and report.broken_seq == 4 and "rewritten" in report.reason
    assert log.verify_chain([Checkpoint(0, "0" * 64)]).ok


def _edit_texts(path: Path, old: str, new: str, rekey: bool = False) -> int:
    """Replace words inside the stored texts (compressed or not), with their keys when `rekey`; the
    number of the first text changed."""
    conn = sqlite3.connect(path)
    changed = []
    for number, key, value in conn.execute("SELECT id, key, text FROM texts ORDER BY id").fetchall():
        if old in unpack(value):
            text = unpack(value).replace(old, new)
            changed.append((pack(text), key_of(sha256_text(text)) if rekey else key, number))
    conn.close()
    tamper_audit(path)  # drop the triggers
    conn = sqlite3.connect(path)
    conn.executemany("UPDATE texts SET text = ?, key = ? WHERE id = ?", changed)
    conn.commit()
    conn.close()
    return changed[0][2]


def test_an_altered_or_missing_passage_text_is_caught(engine: Engine) -> None:
    engine.ask(QUESTION, k=3)
    log = engine.audit
    number = _edit_texts(log.path, "billion", "million")
    report = log.verify_chain()
    assert not report.ok and report.broken_seq == 1 and f"altered (text {number}," in report.reason
    tamper_audit(log.path, f"DELETE FROM texts WHERE id = {number}")
    assert f"missing (text {number})" in log.verify_chain().reason
    tamper_audit(log.path, "UPDATE texts SET text = x'00ff00ff'")
    assert "altered" in log.verify_chain().reason


def test_an_altered_document_version_is_caught(engine: Engine) -> None:
    """A document's fields (title, date, path, sha256) are stored once and named by every citation of
    it: editing them, even with the row's key made to fit, breaks every record that names them."""
    engine.ask(QUESTION, k=3)
    engine.ask("cocaine tonnes", k=3)
    log = engine.audit
    title = log.records()[0].payload["passages"][0]["title"]
    number = _edit_texts(log.path, f'"title":"{title}"', '"title":"Another report"')
    report = log.verify_chain()
    assert not report.ok and report.broken_seq == 1 and f"altered (text {number}," in report.reason
    with pytest.raises(AuditError, match="names a text the log does not hold"):
        log.records()
    _edit_texts(log.path, '"title":"Another report"', '"title":"Yet another report"', rekey=True)
    report = log.verify_chain()
    assert not report.ok and report.broken_seq == 1 and "does not match its hash" in report.reason
    assert log.records()[0].payload["passages"][0]["title"] == "Yet another report", "read, but not verified"


def test_texts_swapped_between_rows_are_caught(engine: Engine) -> None:
    """Each row still holds a text that fits its key, but the records now name other texts."""
    engine.ask(QUESTION, k=3)
    log = engine.audit
    tamper_audit(log.path, "CREATE TEMP TABLE t AS SELECT id, key, text FROM texts",
                 "UPDATE texts SET key = (SELECT key FROM t WHERE t.id = 5 - texts.id), "
                 "text = (SELECT text FROM t WHERE t.id = 5 - texts.id) WHERE id IN (3, 2)")  # fmt: skip
    report = log.verify_chain()
    assert not report.ok and report.broken_seq == 1 and "does not match its hash" in report.reason


def test_a_record_made_to_name_another_text_is_caught(engine: Engine) -> None:
    engine.ask(QUESTION, k=3)
    log = engine.audit
    conn = sqlite3.connect(log.path)
    body = unpack(conn.execute("SELECT payload FROM records WHERE seq = 1").fetchone()[0])
    conn.close()
    first, second = re.findall(r"#[0-9]+", body)[-2:]  # two texts it names, swapped
    edited = re.sub(r"#[0-9]+", lambda m: {first: second, second: first}.get(m[0], m[0]), body)
    assert first != second and edited != body
    tamper_audit(log.path)
    conn = sqlite3.connect(log.path)
    conn.execute("UPDATE records SET payload = ? WHERE seq = 1", (pack(edited, BODY_CODEC),))
    conn.commit()
    conn.close()
    report = log.verify_chain()
    assert not report.ok and report.broken_seq == 1 and "does not match its hash" in report.reason


def test_digests_are_stored_as_bytes_and_read_as_hex(log: AuditLog) -> None:
    conn = sqlite3.connect(log.path)
    stored = conn.execute("SELECT prev_hash, hash, mac FROM records WHERE seq = 2").fetchone()
    assert [type(v) for v in stored] == [bytes] * 3 and all(len(v) == 32 for v in stored)
    assert conn.execute("PRAGMA user_version").fetchone()[0] == 1
    conn.close()
    record = log.records()[1]
    assert [record.prev_hash, record.hash, record.mac] == [v.hex() for v in stored]
    assert record.prev_hash == log.records()[0].hash


def test_key_file_is_private_and_required(log: AuditLog, tmp_path: Path) -> None:
    assert (log.key_path.stat().st_mode & 0o777) == 0o600 and log.key_path.name == "audit.sqlite3.key"
    key = log.key_path.read_text()
    log.key_path.unlink()
    report = log.verify_chain()
    assert not report.ok and "missing" in report.reason
    assert AuditLog(log.path).verify_chain(use_key=False).ok
    with pytest.raises(AuditError, match=r"key .* is missing"):
        AuditLog(log.path).append("answer", "q", {})
    other = tmp_path / "other.key"
    other.write_text("ab" * 32)
    assert "not this log's key" in AuditLog(log.path, other).verify_chain().reason
    with pytest.raises(AuditError, match="is not the key"):
        AuditLog(log.path, other).append("answer", "q", {})
    log.key_path.write_text(key)
    assert AuditLog(log.path).verify_chain().ok


def test_key_kept_elsewhere(tmp_path: Path) -> None:
    secret = tmp_path / "secrets" / "audit.key"
    log = AuditLog(tmp_path / "log" / "audit.sqlite3", secret)
    log.append("answer", "q", {"passages": []})
    assert secret.exists() and not (tmp_path / "log" / "audit.sqlite3.key").exists()
    assert log.verify_chain().keyed and not AuditLog(log.path).verify_chain().ok


@pytest.fixture()
def engine(settings: Settings) -> Engine:
    return Engine.start(settings, build="missing", log=lambda m: None)


def test_lean_records_keep_every_answer_field(engine: Engine) -> None:
    answers = [engine.ask(QUESTION, k=5), engine.ask(QUESTION, k=5), engine.ask("cocaine tonnes", k=2)]
    engine.feedback(answers[0].id, helpful=True)
    records = AuditLog(engine.settings.audit).records()
    for answer, record in zip(answers, records):
        assert record.payload == answer.to_json() | {"settings": record.payload["settings"]}
        assert record.payload["settings"]["k"] in (5, 2)
    assert records[3].payload == {"answer_id": answers[0].id, "helpful": True}
    conn = sqlite3.connect(engine.settings.audit)
    sizes = [n for (n,) in conn.execute("SELECT length(payload) + length(question) + 300 FROM records")]
    texts = conn.execute("SELECT count(*) FROM texts").fetchone()[0]
    assert all(lean for (lean,) in conn.execute("SELECT lean FROM records"))
    assert max(sizes) < 2048, sizes
    assert texts <= 5 + 1 + 1 + 2 + 2 + 2, "each passage text, document, column list and setting stored once"


def test_one_connection_shared_by_threads(tmp_path: Path) -> None:
    log = AuditLog(tmp_path / "audit.sqlite3")
    errors: list[BaseException] = []

    def write(n: int) -> None:
        try:
            for i in range(25):
                log.append("answer", f"q{n}-{i}", {"passages": [], "i": i}, channel="api")
        except BaseException as exc:  # pragma: no cover - reported below
            errors.append(exc)

    threads = [threading.Thread(target=write, args=(n,)) for n in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert not errors
    report = log.verify_chain()
    assert report.ok and report.checked == 200
    conn = sqlite3.connect(log.path)
    assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    assert [s for (s,) in conn.execute("SELECT seq FROM records ORDER BY seq")] == list(range(1, 201))


def test_full_disk_on_the_kept_connection_loses_no_record(tmp_path: Path) -> None:
    log = AuditLog(tmp_path / "audit.sqlite3")
    log.append("answer", "first", {"passages": []})
    assert log._conn is not None  # the kept connection: fill the disk under it
    pages = log._conn.execute("PRAGMA page_count").fetchone()[0]
    log._conn.execute(f"PRAGMA max_page_count = {pages}")
    with pytest.raises(AuditError, match="full"):
        log.append("answer", "second " + "x" * 20_000, {"passages": []})
    assert "full" in (log.check() or "")
    assert [r.question for r in AuditLog(log.path).records()] == ["first"] and log.verify_chain().ok
    log.append("answer", "third", {"passages": []})  # a fresh connection, the disk has room again
    assert log.check() is None and log.verify_chain().checked == 2


@contextlib.contextmanager
def _small_disk(folder: Path, size: str) -> Iterator[Path]:
    folder.mkdir()
    if subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(folder)],
                      capture_output=True).returncode != 0:  # fmt: skip
        pytest.skip("mounting a small tmpfs is not permitted here")
    try:
        yield folder
    finally:
        subprocess.run(["umount", "-l", str(folder)], check=True)


def test_a_really_full_disk_fails_appends_and_keeps_the_records(tmp_path: Path) -> None:
    with _small_disk(tmp_path / "small", "256k") as disk:
        log = AuditLog(disk / "audit.sqlite3")
        written = 0
        with pytest.raises(AuditError, match="full"):
            for i in range(10_000):
                log.append("answer", f"question {i} " + os.urandom(900).hex(), {"passages": []})
                written += 1
        assert written > 10 and "full" in (log.check() or "")
        log.close()
        report = AuditLog(log.path).verify_chain()
        assert report.ok and report.checked == written


def test_check_reports_problems_without_paths(log: AuditLog, tmp_path: Path) -> None:
    assert log.check() is None
    with immutable(log.path):
        problem = log.check()
        assert problem and "not writable" in problem and str(tmp_path) not in problem
        with pytest.raises(AuditError):
            log.append("answer", "q", {})
        assert "could not be written" in (log.check() or "")
    log.append("answer", "q", {})
    assert log.check() is None
    garbage = tmp_path / "garbage.sqlite3"
    garbage.write_bytes(b"not a database at all" * 100)
    assert "damaged" in (AuditLog(garbage).check() or "")
    blocked = tmp_path / "blocker"
    blocked.write_text("a file where a folder should be")
    bad = AuditLog(blocked / "audit.sqlite3")
    assert "cannot be created" in (bad.check() or ""), "said before any question fails"
    with pytest.raises(AuditError, match="cannot be opened"):
        bad.append("answer", "q", {})
    assert "could not be written" in (bad.check() or "") and str(blocked) not in (bad.check() or "")


def test_a_replaced_log_file_is_reopened_not_written_blind(log: AuditLog) -> None:
    moved = log.path.with_name("moved.sqlite3")
    for suffix in ("", "-wal", "-shm"):
        if Path(f"{log.path}{suffix}").exists():
            os.rename(f"{log.path}{suffix}", f"{moved}{suffix}")
    log.append("answer", "after the move", {"passages": []})
    assert [r.question for r in AuditLog(log.path).records()] == ["after the move"]


def test_cli_prints_a_checkpoint_that_proves_later(log: AuditLog, capsys: pytest.CaptureFixture[str]) -> None:
    audit = ["--audit", str(log.path)]
    assert main(["audit", "verify", *audit]) == 0
    out = capsys.readouterr().out
    checkpoint = next(line.split(": ", 1)[1] for line in out.splitlines() if line.startswith("checkpoint: "))
    assert checkpoint.startswith("4:") and "hashes and MACs checked" in out
    log.append("answer", "later", {"passages": []})
    assert main(["audit", "verify", *audit, "--checkpoint", checkpoint]) == 0
    assert "checkpoints 4 hold" in capsys.readouterr().out
    tamper_audit(log.path, "DELETE FROM records WHERE seq >= 4")
    assert main(["audit", "verify", *audit, "--checkpoint", checkpoint]) == 1
    assert "records were deleted" in capsys.readouterr().out
    assert main(["audit", "verify", *audit, "--checkpoint", "4:nothex"]) == 1
    assert "SEQ:HASH" in capsys.readouterr().err
    log.key_path.rename(log.key_path.with_suffix(".gone"))
    assert main(["audit", "verify", *audit]) == 1 and "missing" in capsys.readouterr().out
    assert main(["audit", "verify", *audit, "--without-key"]) == 0
    assert "chain intact (hashes checked)" in capsys.readouterr().out


def test_checkpoint_format() -> None:
    digest = hashlib.sha256(b"x").hexdigest()
    assert str(Checkpoint.parse(f" 12:{digest.upper()} ")) == f"12:{digest}"
    with pytest.raises(AuditError, match="SEQ:HASH"):
        Checkpoint.parse("12")


def _passage(rank: int, text: str, **changes: object) -> dict:
    passage = {
        "rank": rank, "text": text, "score": 0.5, "relevance": 0.5, "lexical_score": 1.0, "dense_score": None,
        "rerank_score": None, "source": "a.txt", "document_id": "d1", "title": "A", "date": None, "start": 0,
        "end": len(text), "page": None, "page_end": None, "paragraph": 1, "paragraph_end": 1, "line_start": 1,
        "line_end": 1, "document_sha256": "0" * 64, "passage_sha256": hashlib.sha256(text.encode()).hexdigest(),
        "index_version": "v1", "model": None,
    }  # fmt: skip
    passage["reference"] = f'A, undated, para 1: "{" ".join(text.split())}"'
    return passage | changes


def _without(passage: dict, key: str) -> dict:
    return {k: v for k, v in passage.items() if k != key}


def _copy(passage: dict, source: str, **changes: object) -> dict:
    """The citation of another file's copy of a passage, as `also_in` lists it (no text, no reference)."""
    moved = {"source": source, "document_id": source, "title": source.upper(), "start": 7, "paragraph": 3}
    return {k: v for k, v in passage.items() if k not in ("text", "reference", "rank", "score")} | moved | changes


ODD_PAYLOADS = {
    "feedback": {"answer_id": "x", "helpful": True},
    "no passages": {"passages": [], "index_version": "v1"},
    "a value that looks like a reference": {"x": {"#": "abc"}, "question": "another question", "id": "other"},
    "non-text keys and tuples": {1: (1, 2), "passages": []},
    "answer": {"index_version": "v1", "model": None, "passages": [_passage(1, "one"), _passage(2, "two  words")]},
    "no reference": {"index_version": "v1", "passages": [_without(_passage(1, "x"), "reference")]},
    "another reference": {"index_version": "v1", "passages": [_passage(1, "one", reference="edited")]},
    "another version": {"index_version": "v1", "passages": [_passage(1, "one"), _passage(2, "t", index_version="v2")]},
    "no version": {"index_version": "v1", "passages": [_without(_passage(1, "x"), "index_version")]},
    "hash not of the text": {"passages": [_passage(1, "one", passage_sha256="f" * 64)]},
    "an extra field": {"passages": [_passage(1, "one"), _passage(2, "two", extra=[1])]},
    "not a list": {"passages": "none"},
    "long settings": {"settings": {"documents": [f"doc-{i}.txt" for i in range(50)]}, "passages": []},
    "copies": {"index_version": "v1", "model": None, "passages": [
        _passage(1, "one", also_in=[_copy(_passage(1, "one"), "b.txt"), _copy(_passage(1, "one"), "c.txt")]),
        _passage(2, "two", also_in=[]), _passage(3, "six", also_in=[_copy(_passage(3, "six"), "a.txt")])]},
    "copies of their own": {"index_version": "v1", "model": None, "passages": [
        _passage(1, "one", also_in=[_copy(_passage(1, "one"), "b.txt")]),
        _passage(2, "two", also_in=[_copy(_passage(2, "two"), "b.txt", extra=1)]),
        _passage(3, "six", also_in=[_copy(_passage(3, "six"), "b.txt", passage_sha256="f" * 64)]),
        _passage(4, "ten", also_in="none")]},
}  # fmt: skip


@pytest.mark.parametrize("name", sorted(ODD_PAYLOADS))
def test_the_log_never_changes_a_payload(name: str, tmp_path: Path) -> None:
    """Written to a log (compact, texts by number) and read back: the payload as it went in."""
    log = AuditLog(tmp_path / "audit.sqlite3")
    payload = ODD_PAYLOADS[name]
    log.append("answer", "q", payload, record_id="rid")
    log.append("answer", "q", payload, record_id="rid2")  # its texts are in the log already
    expected = json.loads(json.dumps(payload))
    assert [r.payload for r in log.records()] == [expected, expected] and log.get("rid2").payload == expected
    assert log.verify_chain().ok


def test_compact_gives_back_every_body_exactly() -> None:
    """Names next to digits, `#`s, escaped quotes, names not stored: `expand` gives back the body, or
    `compact` says it would not."""
    rng = random.Random(7)
    names = [hashlib.sha256(bytes([n])).hexdigest() for n in range(6)]
    numbers = {name: n for n, name in enumerate(names[:4], start=1)}
    pieces = [*(f'"{name}"' for name in names), "#", "1", "23", '\\"', '"', ",", "x", " ", "#9", "9"]
    given_back = 0
    for _ in range(3000):
        body = "".join(rng.choice(pieces) for _ in range(rng.randint(1, 12)))
        packed = compact(body, numbers)
        if packed is not None:
            assert expand(packed, {n: name for name, n in numbers.items()}.__getitem__) == body, body
            given_back += 1
    assert given_back > 500


def test_a_body_that_compact_would_not_give_back_keeps_its_names(tmp_path: Path) -> None:
    """A body holding `#` and digits would not come back from its compact form: it is stored with its
    texts named by SHA-256, read back as it was, and its texts are checked by name."""
    payload = ODD_PAYLOADS["answer"] | {"notices": ["see #3"]}
    lean = encode(payload, "q", "rid")
    assert lean is not None and compact(lean.body, {name: n for n, name in enumerate(lean.texts, 1)}) is None
    log = AuditLog(tmp_path / "audit.sqlite3")
    log.append("answer", "q", payload, record_id="rid")
    log.append("answer", "q", ODD_PAYLOADS["answer"], record_id="rid2")
    conn = sqlite3.connect(log.path)
    assert [lean for (lean,) in conn.execute("SELECT lean FROM records ORDER BY seq")] == [1, 2]
    conn.close()
    assert [r.payload for r in log.records()] == [payload, ODD_PAYLOADS["answer"]] and log.verify_chain().ok
    _edit_texts(log.path, "two  words", "two words")
    report = log.verify_chain()
    assert not report.ok and report.broken_seq == 1 and "missing or altered (sha256" in report.reason


@pytest.mark.parametrize("name", sorted(ODD_PAYLOADS))
def test_the_lean_form_never_changes_a_payload(name: str) -> None:
    payload = ODD_PAYLOADS[name]
    lean = encode(payload, "q", "rid")
    if lean is not None:
        assert decode(lean.body, lean.texts.__getitem__, "q", "rid") == json.loads(json.dumps(payload))
    assert (lean is not None) == (name in ("feedback", "no passages", "a value that looks like a reference",
                                           "non-text keys and tuples", "answer", "long settings", "copies",
                                           "copies of their own"))  # fmt: skip


def test_long_lists_seen_again_come_back_exactly() -> None:
    """The JSON of the last long list of texts is remembered (a `searched` list repeats from one answer to
    the next): lists equal in Python but not in JSON (1 == 1.0 == True) and changed lists are written anew."""
    paths = [f"reports/report-{i:04d}.txt" for i in range(40)]
    sequence = [paths, list(paths), [*paths[:-1], "other.txt"], [1] * 40, [1.0] * 40, [True] * 40, list(paths),
                [*paths[:20], 7, *paths[21:]]]  # fmt: skip
    for searched in sequence:
        payload = {"searched": searched, "passages": []}
        lean = encode(payload, "q", "rid")
        assert lean is not None
        back = decode(lean.body, lean.texts.__getitem__, "q", "rid")
        assert json.dumps(back) == json.dumps(payload)
        assert all(name == hashlib.sha256(text.encode()).hexdigest() for name, text in lean.texts.items())


def test_copies_are_stored_as_rows_unless_they_would_not_come_back() -> None:
    """A passage's other copies (`also_in`) name their documents like passages and keep only their own
    fields; copies with fields of their own, another text, or not a list are kept as they are."""
    packed = json.loads(encode(ODD_PAYLOADS["copies"], "q", "rid").body)["p"]  # type: ignore[union-attr]
    copies = [row[-2] for row in packed["r"]]
    assert [len(c["@"]) if isinstance(c, dict) else c for c in copies] == [2, [], 1] and "a" in packed
    kept = json.loads(encode(ODD_PAYLOADS["copies of their own"], "q", "rid").body)["p"]  # type: ignore[union-attr]
    assert [isinstance(row[-2], dict) for row in kept["r"]] == [True, False, False, False]


def test_a_full_disk_fails_the_question_and_loses_no_record(engine: Engine) -> None:
    """tests/test_hostile.py's reproducer, on the kept connection (it opens no new one per record)."""
    engine.ask(QUESTION)
    conn = engine.audit._conn
    assert conn is not None
    pages = conn.execute("PRAGMA page_count").fetchone()[0]
    conn.execute(f"PRAGMA max_page_count = {pages}")  # the next page cannot be allocated: SQLITE_FULL
    answered = [QUESTION]
    with pytest.raises(AuditError, match="full"):
        for i in range(200):  # until the free space left in the last pages is used up
            answered.append(
                engine.ask(f"What does wastewater analysis show about cocaine? {i} " + "padding " * 230).question
            )
    assert "full" in (engine.audit.check() or "")
    log = AuditLog(engine.settings.audit)
    assert [r.question for r in log.records()] == answered and log.verify_chain().ok
    engine.ask("What does wastewater analysis show about cocaine?")  # a fresh connection, without the cap
    assert log.verify_chain().checked == len(answered) + 1 and engine.audit.check() is None
