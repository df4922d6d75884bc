"""threatqa's audit log writers of earlier layouts, kept in substance so that tests (migration) and
benchmarks/audit.py (the baseline) can write logs the old way: before MACs and lean records
(src/threatqa/audit.py at 833f93d), and keyed, lean records with hexadecimal digests (at aeb43bd)."""

from __future__ import annotations

import hashlib
import hmac
import json
import sqlite3
import time
import uuid
import zlib
from typing import Any

from threatqa.audit_key import key_id
from threatqa.audit_lean import encode

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


# The writer at aeb43bd: keyed, lean records in layout 0 (digests as hexadecimal text, each text
# zlib-compressed in a table keyed by its hexadecimal sha256).
KEYED_SCHEMA = """
CREATE TABLE IF NOT EXISTS records (
    seq INTEGER PRIMARY KEY, id TEXT UNIQUE NOT NULL, time TEXT NOT NULL, kind TEXT NOT NULL,
    user TEXT, channel TEXT NOT NULL, question TEXT NOT NULL, payload TEXT NOT NULL,
    prev_hash TEXT NOT NULL, hash TEXT NOT NULL,
    format INTEGER NOT NULL DEFAULT 1, lean INTEGER NOT NULL DEFAULT 0, mac TEXT);
CREATE TABLE IF NOT EXISTS texts (sha256 TEXT PRIMARY KEY, text TEXT NOT NULL) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS meta (name TEXT PRIMARY KEY, value TEXT NOT NULL) WITHOUT ROWID;
""" + "".join(
    f"CREATE TRIGGER IF NOT EXISTS {table}_no_{action} BEFORE {action.upper()} ON {table} "
    "BEGIN SELECT RAISE(ABORT, 'the audit log is append-only'); END;\n"
    for table in ("records", "texts", "meta")
    for action in ("update", "delete")
)


def _zpack(text: str) -> str | bytes:
    packed = zlib.compress(text.encode("utf-8"), 6)
    return packed if len(packed) < len(text.encode("utf-8")) else text


def keyed_record(conn: sqlite3.Connection, key: bytes, kind: str, question: str, payload: dict[str, Any],
                 user: str | None, channel: str, record_id: str, stamp: str) -> str:  # fmt: skip
    """Insert one record the way the code at aeb43bd did (KEYED_SCHEMA must exist); returns its hash."""
    conn.execute("INSERT OR IGNORE INTO meta VALUES ('key_id', ?)", (key_id(key),))
    lean = encode(payload, question, record_id)
    body = lean.body if lean else json.dumps(payload, ensure_ascii=False, sort_keys=True)
    last = conn.execute("SELECT seq, hash FROM records ORDER BY seq DESC LIMIT 1").fetchone()
    seq, prev = (last[0] + 1, last[1]) if last else (1, "0" * 64)
    fields = [2, seq, record_id, stamp, kind, user, channel, question, int(bool(lean)), body, prev]
    digest = hashlib.sha256(json.dumps(fields, ensure_ascii=False).encode("utf-8")).hexdigest()
    mac = hmac.new(key, digest.encode("ascii"), hashlib.sha256).hexdigest()
    texts = [(name, _zpack(text)) for name, text in (lean.texts.items() if lean else ())]
    conn.executemany("INSERT OR IGNORE INTO texts VALUES (?, ?)", texts)
    stored = _zpack(body) if lean else body
    row = (seq, record_id, stamp, kind, user, channel, question, stored, prev, digest, 2, int(bool(lean)), mac)
    conn.execute("INSERT INTO records VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)", row)
    return digest
