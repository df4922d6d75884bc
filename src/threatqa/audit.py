"""The audit log: every answer (and every feedback) appended to SQLite, chained by hash.

Each record's hash covers its content and the previous record's hash, so editing, deleting or
re-ordering any record breaks the chain at that record (`verify_chain`). Triggers refuse UPDATE
and DELETE through SQLite itself; the chain catches changes made around them. A record that
cannot be written raises `AuditError`: the caller must fail the request rather than answer
without a record.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import sqlite3
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from threatqa.errors import AuditError

GENESIS = "0" * 64
_SCHEMA = """
CREATE TABLE IF NOT EXISTS records (
    seq INTEGER PRIMARY KEY, id TEXT UNIQUE NOT NULL, time TEXT NOT NULL, kind TEXT NOT NULL,
    user TEXT, channel TEXT NOT NULL, question TEXT NOT NULL, payload TEXT NOT NULL,
    prev_hash TEXT NOT NULL, hash TEXT NOT NULL);
CREATE TRIGGER IF NOT EXISTS records_no_update BEFORE UPDATE ON records
    BEGIN SELECT RAISE(ABORT, 'the audit log is append-only'); END;
CREATE TRIGGER IF NOT EXISTS records_no_delete BEFORE DELETE ON records
    BEGIN SELECT RAISE(ABORT, 'the audit log is append-only'); END;
"""


@dataclass(frozen=True)
class AuditRecord:
    seq: int
    id: str
    time: str
    kind: str  # "answer" or "feedback"
    user: str | None
    channel: str  # "cli", "api", "ui"
    question: str
    payload: dict[str, Any]
    prev_hash: str
    hash: str

    def to_json(self) -> dict[str, Any]:
        return {name: getattr(self, name) for name in self.__dataclass_fields__}


@dataclass(frozen=True)
class ChainReport:
    ok: bool
    checked: int
    broken_seq: int | None = None
    broken_id: str | None = None
    reason: str = ""


def record_hash(seq: int, id: str, time: str, kind: str, user: str | None, channel: str, question: str,
                payload: str, prev_hash: str) -> str:  # fmt: skip
    """SHA-256 over the canonical JSON of a record's fields and the previous hash."""
    body = json.dumps([seq, id, time, kind, user, channel, question, payload, prev_hash], ensure_ascii=False)
    return hashlib.sha256(body.encode("utf-8")).hexdigest()


class AuditLog:
    """Append-only, hash-chained log in one SQLite file."""

    def __init__(self, path: Path) -> None:
        self.path = path

    @contextlib.contextmanager
    def _connect(self, write: bool) -> Iterator[sqlite3.Connection]:
        try:
            if write:
                self.path.parent.mkdir(parents=True, exist_ok=True)
            elif not self.path.exists():
                raise AuditError(f"no audit log at {self.path}")
            conn = sqlite3.connect(self.path, timeout=30, isolation_level=None)
        except (OSError, sqlite3.Error) as exc:
            raise AuditError(f"audit log {self.path} cannot be opened ({exc})") from None
        try:
            conn.row_factory = sqlite3.Row
            conn.execute("PRAGMA synchronous=FULL")
            if write:
                conn.executescript(_SCHEMA)
            yield conn
        except sqlite3.Error as exc:
            raise AuditError(f"audit log {self.path} cannot be {'written' if write else 'read'} ({exc})") from None
        finally:
            conn.close()

    def append(self, kind: str, question: str, payload: dict[str, Any], user: str | None = None,
               channel: str = "cli", record_id: str | None = None) -> AuditRecord:  # fmt: skip
        """Write one record, chained to the last; raises AuditError when it cannot be written."""
        with self._connect(write=True) as conn:
            conn.execute("BEGIN IMMEDIATE")  # serialises writers, so the chain has no forks
            try:
                last = conn.execute("SELECT seq, hash FROM records ORDER BY seq DESC LIMIT 1").fetchone()
                seq, prev = (last["seq"] + 1, last["hash"]) if last else (1, GENESIS)
                rid = record_id or uuid.uuid4().hex
                stamp = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime()) + f".{time.time_ns() % 10**9 // 10**6:03d}Z"
                body = json.dumps(payload, ensure_ascii=False, sort_keys=True)
                digest = record_hash(seq, rid, stamp, kind, user, channel, question, body, prev)
                conn.execute(
                    "INSERT INTO records VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                    (seq, rid, stamp, kind, user, channel, question, body, prev, digest),
                )
                conn.execute("COMMIT")
            except BaseException:
                with contextlib.suppress(sqlite3.Error):
                    conn.execute("ROLLBACK")
                raise
        return AuditRecord(seq, rid, stamp, kind, user, channel, question, payload, prev, digest)

    def get(self, record_id: str) -> AuditRecord:
        with self._connect(write=False) as conn:
            row = conn.execute("SELECT * FROM records WHERE id = ? OR CAST(seq AS TEXT) = ?", (record_id, record_id))
            found = row.fetchone()
        if found is None:
            raise AuditError(f"no audit record {record_id!r} in {self.path}")
        return _record(found)

    def records(self, first: int | None = None, last: int | None = None) -> list[AuditRecord]:
        """Records with first <= seq <= last (either bound may be omitted), in order."""
        with self._connect(write=False) as conn:
            rows = conn.execute(
                "SELECT * FROM records WHERE seq >= ? AND seq <= ? ORDER BY seq",
                (first if first is not None else 0, last if last is not None else 2**62),
            ).fetchall()
        return [_record(row) for row in rows]

    def verify_chain(self) -> ChainReport:
        """Recompute every hash in order; report the first record that does not fit."""
        prev, expected_seq, checked = GENESIS, 1, 0
        with self._connect(write=False) as conn:
            for row in conn.execute("SELECT * FROM records ORDER BY rowid"):
                fields = [row[k] for k in ("seq", "id", "time", "kind", "user", "channel", "question", "payload")]
                reason = ""
                if row["seq"] != expected_seq:
                    reason = (
                        f"expected record number {expected_seq}, found {row['seq']} (a record was deleted or moved)"
                    )
                elif row["prev_hash"] != prev:
                    reason = "its link to the previous record does not match (records deleted or re-ordered)"
                elif record_hash(*fields, row["prev_hash"]) != row["hash"]:
                    reason = "its content does not match its hash (the record was edited)"
                if reason:
                    return ChainReport(False, checked, row["seq"], row["id"], reason)
                prev, expected_seq, checked = row["hash"], expected_seq + 1, checked + 1
        return ChainReport(True, checked)


def _record(row: sqlite3.Row) -> AuditRecord:
    values = dict(row)
    values["payload"] = json.loads(values["payload"])
    return AuditRecord(**values)
