"""The audit log's chain: how a record is hashed, and the walk that checks every record in order."""

from __future__ import annotations

import hashlib
import json
import sqlite3
import zlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from threatqa import audit_lean
from threatqa.audit_key import GENESIS, Checkpoint, key_id, mac_matches, read_key
from threatqa.audit_store import NAMED, NUMBERED, WHOLE, TextProblem, Texts, to_hex, unpack
from threatqa.errors import AuditError

LEGACY, KEYED = 1, 2  # record formats: 1 hashes the whole payload (logs before MACs), 2 its stored form (names)


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
    """Format 2: SHA-256 over the fields and the payload as stored, a lean one with its texts named by
    SHA-256 (the log keeps it compact: `stored_body` puts the names back from the texts themselves), so
    the hash covers the texts."""
    body = json.dumps([KEYED, seq, id, time, kind, user, channel, question, int(lean), payload, prev_hash],
                      ensure_ascii=False)  # fmt: skip
    return hashlib.sha256(body.encode("utf-8")).hexdigest()


def columns(conn: sqlite3.Connection) -> list[str]:
    return [row[1] for row in conn.execute("PRAGMA table_info(records)")]


def field_of(row: sqlite3.Row, name: str, default: Any = None) -> Any:
    """A column that logs written before MACs lack (a Row's `in` looks at its values, not its names)."""
    return row[name] if name in row.keys() else default  # noqa: SIM118


def stored_body(row: sqlite3.Row, texts: Texts) -> str:
    """The payload text a record's format-2 hash is over: its JSON, or its lean body with every text
    named by SHA-256 (a compact body's numbers turned back into names, each text checked on the way:
    TextProblem when one is missing or altered)."""
    lean = field_of(row, "lean", WHOLE)
    if lean == WHOLE:
        return str(row["payload"])
    body = unpack(row["payload"])
    return audit_lean.expand(body, texts.name) if lean == NUMBERED else body


def payload_of(row: sqlite3.Row, texts: Texts) -> dict[str, Any]:
    """A record's payload as it was logged (a lean one with its texts put back)."""
    if not field_of(row, "lean"):
        return json.loads(row["payload"])
    try:
        return audit_lean.decode(stored_body(row, texts), texts.text, row["question"], row["id"])
    except (KeyError, TextProblem, zlib.error, UnicodeDecodeError) as exc:
        raise AuditError(f"audit record {row['seq']} names a text the log does not hold ({exc})") from None


def legacy_body(row: sqlite3.Row, texts: Texts) -> str:
    """The payload text a format-1 record was hashed over (a migrated one is lean now: rebuilt)."""
    if field_of(row, "lean"):
        return json.dumps(payload_of(row, texts), ensure_ascii=False, sort_keys=True)
    return str(row["payload"])


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
    prev, expected, texts = GENESIS, 1, Texts(conn)
    rows = conn.cursor()
    rows.row_factory = sqlite3.Row
    for row in rows.execute("SELECT * FROM records ORDER BY seq") if columns(conn) else ():
        reason = _misfit(row, prev, expected, key, texts)
        if not reason and pending.get(row["seq"], to_hex(row["hash"])) != to_hex(row["hash"]):
            reason = "its hash is not the checkpoint's: records up to it were rewritten"
        if reason:
            head = Checkpoint(expected - 1, prev)
            return ChainReport(False, expected - 1, row["seq"], row["id"], reason, head, key is not None)
        pending.pop(row["seq"], None)
        prev, expected = to_hex(row["hash"]) or "", expected + 1
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


def _misfit(row: sqlite3.Row, prev: str, expected: int, key: bytes | None, texts: Texts) -> str:
    """Why a record does not fit the chain at this point ("" when it does)."""
    if row["seq"] != expected:
        return f"expected record number {expected}, found {row['seq']} (a record was deleted or moved)"
    if to_hex(row["prev_hash"]) != prev:
        return "its link to the previous record does not match (records deleted or re-ordered)"
    lean = field_of(row, "lean", WHOLE)
    try:
        body = stored_body(row, texts)
        if lean == NAMED and (missing := next((n for n in audit_lean.refs(body) if not texts.holds(n)), None)):
            return f"a passage text it names is missing or altered (sha256 {missing})"
    except TextProblem as exc:
        return f"a passage text it names is {exc}"
    except (zlib.error, UnicodeDecodeError, TypeError, ValueError, KeyError, IndexError, AuditError):
        return "its payload cannot be read (the record was edited)"
    fields = [row[k] for k in ("seq", "id", "time", "kind", "user", "channel", "question")]
    record_format = field_of(row, "format", LEGACY)
    if record_format == LEGACY:
        try:
            digest = record_hash(*fields, legacy_body(row, texts), prev)
        except AuditError:
            return "a passage text it names is missing (the record cannot be rebuilt)"
    elif record_format == KEYED:
        digest = keyed_record_hash(*fields, lean != WHOLE, body, prev)
    else:
        return f"unknown record format {record_format!r}"
    if digest != to_hex(row["hash"]):
        return "its content does not match its hash (the record, or a text it names, was edited)"
    if key is not None and not mac_matches(key, digest, to_hex(row["mac"])):
        return "its MAC does not match: the record was rewritten and re-hashed by someone without the key"
    return ""
