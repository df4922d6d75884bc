"""Migration of a log written before keyed, lean records (its records table has no `mac` column).

Its records keep their number, content and chain hash (format 1: the hash covers the whole
payload), so every checkpoint taken of the old log still holds. Each gets a MAC under the key,
and each payload that decodes back to the exact text that was hashed is stored lean: its
passage texts go to the texts table, and `audit verify` rebuilds the payload to check the hash.
A log whose chain is already broken is not migrated (giving its records MACs would vouch for
them): appends fail until it is moved aside, kept as evidence.
"""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path

from threatqa import audit_lean
from threatqa.audit_chain import verify
from threatqa.audit_key import record_mac
from threatqa.errors import AuditError

BATCH = 500
NEW_COLUMNS = ("format INTEGER NOT NULL DEFAULT 1", "lean INTEGER NOT NULL DEFAULT 0", "mac TEXT")


def migrate(conn: sqlite3.Connection, key: bytes, path: Path) -> int:
    """Migrate inside the caller's transaction; returns the number of records migrated."""
    report = verify(conn, path, None, [])
    if not report.ok:
        raise AuditError(
            f"audit log {path} was not migrated: its chain is broken at record {report.broken_seq} "
            f"({report.reason}); move it aside (keep it as evidence) and a new log starts"
        )
    conn.execute("DROP TRIGGER IF EXISTS records_no_update")  # recreated by the caller with the new schema
    for column in NEW_COLUMNS:
        conn.execute(f"ALTER TABLE records ADD COLUMN {column}")
    conn.execute("CREATE TABLE IF NOT EXISTS texts (sha256 TEXT PRIMARY KEY, text TEXT NOT NULL) WITHOUT ROWID")
    after = 0
    while rows := conn.execute(
        "SELECT seq, id, question, payload, hash FROM records WHERE seq > ? ORDER BY seq LIMIT ?", (after, BATCH)
    ).fetchall():
        for seq, rid, question, body, digest in rows:
            lean = _lean(body, question, rid)
            if lean is not None:
                texts = [(name, audit_lean.pack(text)) for name, text in lean.texts.items()]
                conn.executemany("INSERT OR IGNORE INTO texts VALUES (?, ?)", texts)
                conn.execute(
                    "UPDATE records SET payload = ?, lean = 1 WHERE seq = ?", (audit_lean.pack(lean.body), seq)
                )
            conn.execute("UPDATE records SET mac = ? WHERE seq = ?", (record_mac(key, digest), seq))
        after = rows[-1][0]
    return report.checked


def _lean(body: str, question: str, record_id: str) -> audit_lean.Lean | None:
    """The lean form of a format-1 payload, only if it rebuilds the very text its hash covers."""
    lean = audit_lean.encode(json.loads(body), question, record_id)
    if lean is None:
        return None
    rebuilt = audit_lean.decode(lean.body, lean.texts.__getitem__, question, record_id)
    return lean if json.dumps(rebuilt, ensure_ascii=False, sort_keys=True) == body else None
