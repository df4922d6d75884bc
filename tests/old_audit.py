"""threatqa's audit log writer before MACs and lean records (src/threatqa/audit.py at 833f93d), kept in
substance so that tests (migration) and benchmarks/audit.py (the baseline) can write logs the old way."""

from __future__ import annotations

import hashlib
import json
import sqlite3
import time
import uuid
from typing import Any

OLD_SCHEMA = """
CREATE TABLE IF NOT EXISTS records (
    seq INTEGER PRIMARY KEY, id TEXT UNIQUE NOT NULL, time TEXT NOT NULL, kind TEXT NOT NULL,
    user TEXT, channel TEXT NOT NULL, question TEXT NOT NULL, payload TEXT NOT NULL,
    prev_hash TEXT NOT NULL, hash TEXT NOT NULL);
CREATE TRIGGER IF NOT EXISTS records_no_update BEFORE UPDATE ON records
    BEGIN SELECT RAISE(ABORT, 'the audit log is append-only'); END;
CREATE TRIGGER IF NOT EXISTS records_no_delete BEFORE DELETE ON records
    BEGIN SELECT RAISE(ABORT, 'the audit log is append-only'); END;
"""


def old_record(
    conn: sqlite3.Connection,
    kind: str,
    question: str,
    payload: dict[str, Any],
    user: str | None = None,
    channel: str = "cli",
    record_id: str | None = None,
    stamp: str | None = None,
) -> str:
    """Insert one record after the last (OLD_SCHEMA must exist): the whole payload, chained by sha256.
    Returns the record's hash."""
    last = conn.execute("SELECT seq, hash FROM records ORDER BY seq DESC LIMIT 1").fetchone()
    seq, prev = (last[0] + 1, last[1]) if last else (1, "0" * 64)
    rid = record_id or uuid.uuid4().hex
    stamp = stamp or time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime()) + f".{time.time_ns() % 10**9 // 10**6:03d}Z"
    body = json.dumps(payload, ensure_ascii=False, sort_keys=True)
    fields = [seq, rid, stamp, kind, user, channel, question, body, prev]
    digest = hashlib.sha256(json.dumps(fields, ensure_ascii=False).encode("utf-8")).hexdigest()
    conn.execute("INSERT INTO records VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)", (*fields, digest))
    return digest
