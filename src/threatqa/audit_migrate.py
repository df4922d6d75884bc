"""Migration of a log written in an earlier layout: before keyed, lean records (its records table has
no `mac` column), or before compact records (digests as hexadecimal text, texts keyed by their name).

Its records keep their number, content, chain hash and MAC, so every checkpoint taken of the old log
still holds; records written before MACs get one under the key. Each payload is stored as a record
is written now (`audit_store`): a lean body with its texts by number, digests as bytes. A format-1
payload (its hash covers the whole JSON) is made lean only when it decodes back to the exact text
that was hashed; `audit verify` rebuilds it to check the hash. A log whose chain is already broken
is not migrated (rewriting it would hide how it was broken, and giving its records MACs would
vouch for them): appends fail until it is moved aside, kept as evidence.
"""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Callable, Iterable
from functools import partial
from pathlib import Path
from typing import Any

from threatqa import audit_lean
from threatqa.audit_chain import LEGACY, columns, verify
from threatqa.audit_key import record_mac
from threatqa.audit_store import BODY_CODEC, LAYOUT, NAMED, NUMBERED, TABLES, WHOLE, Texts, pack, to_blob, unpack
from threatqa.errors import AuditError

BATCH = 500
Numbers = Callable[[Iterable[str], Callable[[str], str]], dict[str, int]]  # texts' numbers, by name
KNOWN = 100_000  # numbers of texts kept while migrating (a text named by many records is found once)


def migrate(conn: sqlite3.Connection, key: bytes, path: Path) -> int:
    """Migrate inside the caller's transaction, which then creates the triggers; returns the number of
    records migrated."""
    report = verify(conn, path, None, [])
    if not report.ok:
        raise AuditError(
            f"audit log {path} was not migrated: its chain is broken at record {report.broken_seq} "
            f"({report.reason}); move it aside (keep it as evidence) and a new log starts"
        )
    keyed = "mac" in columns(conn)
    had_texts = conn.execute("SELECT 1 FROM sqlite_schema WHERE type = 'table' AND name = 'texts'").fetchone()
    conn.execute("ALTER TABLE records RENAME TO records_before")
    if had_texts:
        conn.execute("ALTER TABLE texts RENAME TO texts_before")
    for statement in TABLES:
        conn.execute(statement)
    conn.execute(f"PRAGMA user_version = {LAYOUT}")
    texts, known = Texts(conn), dict[str, int]()

    def numbers(names: Iterable[str], text_of: Callable[[str], str]) -> dict[str, int]:
        """The texts' numbers in the new table (`text_of` reads a text the table may lack)."""
        if len(known) > KNOWN:
            known.clear()
        new = {name: text_of(name) for name in names if name not in known}
        known.update(texts.add({name: (text, pack(text)) for name, text in new.items()}))
        return {name: known[name] for name in names}

    after, reader = 0, conn.cursor()
    reader.row_factory = sqlite3.Row
    while rows := reader.execute(
        "SELECT * FROM records_before WHERE seq > ? ORDER BY seq LIMIT ?", (after, BATCH)
    ).fetchall():
        for row in rows:
            conn.execute("INSERT INTO records VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                         _migrated(row, conn, None if keyed else key, numbers))  # fmt: skip
        after = rows[-1]["seq"]
    conn.execute("DROP TABLE records_before")  # with its triggers
    if had_texts:
        conn.execute("DROP TABLE texts_before")
    return report.checked


def _migrated(row: sqlite3.Row, conn: sqlite3.Connection, key: bytes | None, numbers: Numbers) -> tuple[Any, ...]:
    """A record's row in this layout; `key`: the key to give it a MAC with (None: it has one)."""
    form, record_format = (row["lean"], row["format"]) if "lean" in row.keys() else (WHOLE, LEGACY)  # noqa: SIM118
    body, names, text_of = row["payload"], [], partial(_text_before, conn)
    if form != WHOLE:
        body = unpack(body)
        names = audit_lean.refs(body)
    elif record_format == LEGACY and (lean := _lean(body, row["question"], row["id"])) is not None:
        body, names, text_of, form = lean.body, list(lean.texts), lean.texts.__getitem__, NAMED
    if form != WHOLE:
        packed = audit_lean.compact(body, numbers(names, text_of))
        body, form = (packed, NUMBERED) if packed is not None else (body, NAMED)
        body = pack(body, BODY_CODEC)
    mac = record_mac(key, row["hash"]) if key is not None else row["mac"]
    fields = [row[k] for k in ("seq", "id", "time", "kind", "user", "channel", "question")]
    digests = [to_blob(value) if isinstance(value, str) else value for value in (row["prev_hash"], row["hash"], mac)]
    return (*fields, body, digests[0], digests[1], record_format, form, digests[2])


def _text_before(conn: sqlite3.Connection, name: str) -> str:
    found = conn.execute("SELECT text FROM texts_before WHERE sha256 = ?", (name,)).fetchone()
    if found is None:  # verify found every text: only a log changed since could lack one
        raise AuditError(f"the text {name} that an audit record names is missing: the log was not migrated")
    return unpack(found[0])


def _lean(body: str, question: str, record_id: str) -> audit_lean.Lean | None:
    """The lean form of a format-1 payload, only if it rebuilds the very text its hash covers."""
    lean = audit_lean.encode(json.loads(body), question, record_id)
    if lean is None:
        return None
    rebuilt = audit_lean.decode(lean.body, lean.texts.__getitem__, question, record_id)
    return lean if json.dumps(rebuilt, ensure_ascii=False, sort_keys=True) == body else None
