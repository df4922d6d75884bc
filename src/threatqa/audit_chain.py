"""The audit log's chain: how a record is hashed, and the walk that checks every record in order."""

from __future__ import annotations

import hashlib
import json
import sqlite3
import zlib
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from threatqa import audit_lean
from threatqa.audit_key import GENESIS, Checkpoint, key_id, mac_matches, read_key
from threatqa.errors import AuditError

LEGACY, KEYED = 1, 2  # record formats: 1 hashes the whole payload (logs before MACs), 2 the payload as stored


@dataclass(frozen=True)
class ChainReport:
    ok: bool
    checked: int
    broken_seq: int | None = None
    broken_id: str | None = None
    reason: str = ""
    head: Checkpoint = field(default_factory=lambda: Checkpoint(0, GENESIS))  # the last record that fits
    keyed: bool = False  # whether MACs were checked
    notes: tuple[str, ...] = ()


def record_hash(seq: int, id: str, time: str, kind: str, user: str | None, channel: str, question: str,
                payload: str, prev_hash: str) -> str:  # fmt: skip
    """Format 1 (logs before MACs): SHA-256 over the canonical JSON of the fields, whole payload included."""
    body = json.dumps([seq, id, time, kind, user, channel, question, payload, prev_hash], ensure_ascii=False)
    return hashlib.sha256(body.encode("utf-8")).hexdigest()


def keyed_record_hash(seq: int, id: str, time: str, kind: str, user: str | None, channel: str, question: str,
                      lean: bool, payload: str, prev_hash: str) -> str:  # fmt: skip
    """Format 2: SHA-256 over the fields and the payload as stored. A lean payload names its texts by
    SHA-256 and `verify` checks each named text against its name, so the hash covers the texts."""
    body = json.dumps([KEYED, seq, id, time, kind, user, channel, question, int(lean), payload, prev_hash],
                      ensure_ascii=False)  # fmt: skip
    return hashlib.sha256(body.encode("utf-8")).hexdigest()


def columns(conn: sqlite3.Connection) -> list[str]:
    return [row[1] for row in conn.execute("PRAGMA table_info(records)")]


def text_fetcher(conn: sqlite3.Connection) -> Callable[[str], str]:
    def fetch(sha256: str) -> str:
        row = conn.execute("SELECT text FROM texts WHERE sha256 = ?", (sha256,)).fetchone()
        if row is None:
            raise KeyError(sha256)
        return audit_lean.unpack(row[0])

    return fetch


def field_of(row: sqlite3.Row, name: str, default: Any = None) -> Any:
    """A column that logs written before MACs lack (a Row's `in` looks at its values, not its names)."""
    return row[name] if name in row.keys() else default  # noqa: SIM118


def payload_of(row: sqlite3.Row, conn: sqlite3.Connection) -> dict[str, Any]:
    """A record's payload as it was logged (a lean one with its texts put back)."""
    if field_of(row, "lean"):
        try:
            return audit_lean.decode(audit_lean.unpack(row["payload"]), text_fetcher(conn), row["question"], row["id"])
        except (KeyError, zlib.error, UnicodeDecodeError) as exc:
            raise AuditError(f"audit record {row['seq']} names a text the log does not hold ({exc})") from None
    return json.loads(row["payload"])


def legacy_body(row: sqlite3.Row, conn: sqlite3.Connection) -> str:
    """The payload text a format-1 record was hashed over (a migrated one is lean now: rebuilt)."""
    if field_of(row, "lean"):
        return json.dumps(payload_of(row, conn), ensure_ascii=False, sort_keys=True)
    return row["payload"]


def verify(conn: sqlite3.Connection, path: Path, key_path: Path | None, checkpoints: list[Checkpoint]) -> ChainReport:
    """Walk the log in order; the first record that does not fit, or a checkpoint it does not reach,
    makes the report not ok. `key_path` None: hashes and checkpoints only."""
    keyed_log = "mac" in columns(conn)
    key, notes = None, []
    if key_path is not None:
        key = read_key(key_path)
        problem = _key_problem(conn, keyed_log, key, key_path)
        if problem:
            return ChainReport(False, 0, reason=problem)
        if not keyed_log:
            notes.append("the log was written before records had MACs: none to check (the next answer, or "
                         "`threatqa audit migrate`, adds them)")  # fmt: skip
    pending = {cp.seq: cp.hash for cp in checkpoints}
    if pending.get(0, GENESIS) != GENESIS:
        return ChainReport(False, 0, 0, None, "checkpoint 0 must name the empty chain (64 zeros)")
    pending.pop(0, None)
    prev, expected, seen = GENESIS, 1, set[str]()
    rows = conn.cursor()
    rows.row_factory = sqlite3.Row
    for row in rows.execute("SELECT * FROM records ORDER BY seq") if columns(conn) else ():
        reason = _misfit(row, conn, prev, expected, key, seen)
        if not reason and pending.get(row["seq"], row["hash"]) != row["hash"]:
            reason = "its hash is not the checkpoint's: records up to it were rewritten"
        if reason:
            head = Checkpoint(expected - 1, prev)
            return ChainReport(False, expected - 1, row["seq"], row["id"], reason, head, key is not None)
        pending.pop(row["seq"], None)
        prev, expected = row["hash"], expected + 1
    head = Checkpoint(expected - 1, prev)
    if pending:
        seq = min(pending)
        reason = f"the checkpoint names record {seq} but the log ends at record {head.seq}: records were deleted"
        return ChainReport(False, head.seq, seq, None, reason, head, key is not None)
    return ChainReport(True, head.seq, head=head, keyed=key is not None and keyed_log, notes=tuple(notes))


def _key_problem(conn: sqlite3.Connection, keyed_log: bool, key: bytes | None, key_path: Path) -> str:
    if not keyed_log:
        # a key exists only once a keyed log was written: an unkeyed log beside it was rewritten in the old format
        return f"the log carries no MACs although its key {key_path} exists" if key is not None else ""
    if key is None:
        return (f"its key {key_path} is missing, so its MACs cannot be checked (set THREATQA_AUDIT_KEY to the "
                "key file, or check hashes and checkpoints only with --without-key)")  # fmt: skip
    named = conn.execute("SELECT value FROM meta WHERE name = 'key_id'").fetchone()
    if named is not None and named[0] != key_id(key):
        return f"the key {key_path} (id {key_id(key)}) is not this log's key (id {named[0]})"
    return ""


def _misfit(row: sqlite3.Row, conn: sqlite3.Connection, prev: str, expected: int, key: bytes | None,
            seen: set[str]) -> str:  # fmt: skip
    """Why a record does not fit the chain at this point ("" when it does)."""
    if row["seq"] != expected:
        return f"expected record number {expected}, found {row['seq']} (a record was deleted or moved)"
    if row["prev_hash"] != prev:
        return "its link to the previous record does not match (records deleted or re-ordered)"
    lean = bool(field_of(row, "lean"))
    try:
        body = audit_lean.unpack(row["payload"]) if lean else row["payload"]
        if lean and (missing := _bad_texts(body, conn, seen)):
            return f"a passage text it names is missing or altered (sha256 {missing})"
    except (zlib.error, UnicodeDecodeError, TypeError, ValueError, KeyError, IndexError, AuditError):
        return "its payload cannot be read (the record was edited)"
    fields = [row[k] for k in ("seq", "id", "time", "kind", "user", "channel", "question")]
    record_format = field_of(row, "format", LEGACY)
    if record_format == LEGACY:
        try:
            digest = record_hash(*fields, legacy_body(row, conn), row["prev_hash"])
        except AuditError:
            return "a passage text it names is missing (the record cannot be rebuilt)"
    elif record_format == KEYED:
        digest = keyed_record_hash(*fields, lean, body, row["prev_hash"])
    else:
        return f"unknown record format {record_format!r}"
    if digest != row["hash"]:
        return "its content does not match its hash (the record was edited)"
    if key is not None and not mac_matches(key, row["hash"], row["mac"]):
        return "its MAC does not match: the record was rewritten and re-hashed by someone without the key"
    return ""


def _bad_texts(body: str, conn: sqlite3.Connection, seen: set[str]) -> str:
    """The first text a lean body names that is absent or does not hash to its name ("" if none)."""
    names = audit_lean.refs(body)
    fetch = text_fetcher(conn)
    for name in names:
        if name in seen:
            continue
        try:
            if audit_lean.sha256_text(fetch(name)) != name:
                return name
        except (KeyError, zlib.error, UnicodeDecodeError):
            return name
        seen.add(name)
    return ""
