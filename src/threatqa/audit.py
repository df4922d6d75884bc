"""The audit log: every answer (and every feedback) appended to SQLite, chained by hash and keyed.

Each record's hash covers its content and the previous record's hash, so editing, deleting or
re-ordering any record breaks the chain at that record; each record's MAC (HMAC-SHA256 of its
hash under a key kept apart from the log, `audit_key`) shows that whoever wrote it held the key,
so a record edited and re-hashed is caught too; a checkpoint kept elsewhere (`SEQ:HASH`) catches
a log cut short. Triggers refuse UPDATE and DELETE through SQLite itself.

Records are lean (`audit_lean`): each distinct passage text (and document version, settings,
list of documents searched) is stored once and the records name it by its SHA-256, which the
record's hash covers; the log stores those names as row numbers and digests as bytes
(`audit_store`). One connection per `AuditLog`, kept open in WAL mode with synchronous=FULL (a
record is on disk when `append` returns), shared by the threads of a server. A record that cannot
be written raises `AuditError`: the caller must fail the request rather than answer without a
record. Logs of an earlier layout are migrated on the first append (`audit_migrate`).
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import sqlite3
import threading
import time
import uuid
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from threatqa import audit_lean
from threatqa.audit_chain import (
    KEYED,
    ChainReport,
    columns,
    field_of,
    keyed_record_hash,
    payload_of,
    record_hash,
    verify,
)
from threatqa.audit_key import GENESIS, Checkpoint, create_key, default_key_path, key_id, read_key, record_mac
from threatqa.audit_store import (
    BODY_CODEC,
    LAYOUT,
    NAMED,
    NUMBERED,
    TABLES,
    WHOLE,
    Texts,
    layout,
    pack,
    to_blob,
    to_hex,
)
from threatqa.errors import AuditError

__all__ = ["GENESIS", "AuditLog", "AuditRecord", "ChainReport", "Checkpoint", "record_hash"]

MIN_FREE_BYTES = 1 << 20  # below this, check() reports the disk as full
STORED_NAMES = 200_000  # numbers of texts known to be in the log, kept to skip compressing and finding them again
_STATEMENTS = TABLES + [
    f"""CREATE TRIGGER IF NOT EXISTS {table}_no_{action} BEFORE {action.upper()} ON {table}
        BEGIN SELECT RAISE(ABORT, 'the audit log is append-only'); END"""
    for table in ("records", "texts", "meta")
    for action in ("update", "delete")
]


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
    mac: str | None = None  # HMAC-SHA256 of `hash` under the log's key (None in a log not yet migrated)

    def to_json(self) -> dict[str, Any]:
        return {name: getattr(self, name) for name in self.__dataclass_fields__}


class AuditLog:
    """Append-only, hash-chained, keyed log in one SQLite file, with one kept connection for writing."""

    def __init__(self, path: Path, key: Path | str | None = None) -> None:
        self.path = Path(path)
        self.key_path = Path(key) if key else default_key_path(self.path)
        self._lock = threading.Lock()
        self._conn: sqlite3.Connection | None = None
        self._identity: tuple[int, int, int] | None = None  # (pid, device, inode) the connection was opened on
        self._key: bytes | None = None
        self._failure: str | None = None  # why the last append failed, until one succeeds
        self._stored: dict[str, int] = {}  # texts committed to this file (never deleted), by name: their numbers

    # writing ------------------------------------------------------------------------------------

    def append(self, kind: str, question: str, payload: dict[str, Any], user: str | None = None,
               channel: str = "cli", record_id: str | None = None) -> AuditRecord:  # fmt: skip
        """Write one record, chained to the last; raises AuditError when it cannot be written."""
        rid = record_id or uuid.uuid4().hex
        lean = audit_lean.encode(payload, question, rid)
        body = lean.body if lean else json.dumps(payload, ensure_ascii=False, sort_keys=True)
        with self._lock:
            conn = self._writer()
            texts = lean.texts if lean else {}
            new = {name: (text, pack(text)) for name, text in texts.items() if name not in self._stored}
            try:
                conn.execute("BEGIN IMMEDIATE")  # serialises writers (other processes too): the chain has no forks
                last = conn.execute("SELECT seq, hash FROM records ORDER BY seq DESC LIMIT 1").fetchone()
                seq, prev = (last[0] + 1, to_hex(last[1]) or "") if last else (1, GENESIS)
                stamp = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime()) + f".{time.time_ns() % 10**9 // 10**6:03d}Z"
                digest = keyed_record_hash(seq, rid, stamp, kind, user, channel, question, bool(lean), body, prev)
                mac = record_mac(self._key or b"", digest)
                numbers = {name: self._stored[name] for name in texts if name not in new}
                numbers |= Texts(conn, numbered=True).add(new) if new else {}
                stored, form = _stored_body(body, lean is not None, numbers)
                conn.execute(
                    "INSERT INTO records VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                    (seq, rid, stamp, kind, user, channel, question, stored, to_blob(prev), to_blob(digest), KEYED,
                     form, to_blob(mac)),
                )  # fmt: skip
                conn.execute("COMMIT")
            except BaseException as exc:
                self._abandon(conn)
                if isinstance(exc, sqlite3.Error):
                    raise self._failed("cannot be written", exc) from None
                raise
            self._failure = None
            if len(self._stored) > STORED_NAMES:
                self._stored.clear()
            self._stored.update(numbers)
        return AuditRecord(seq, rid, stamp, kind, user, channel, question, payload, prev, digest, mac)

    def _writer(self) -> sqlite3.Connection:
        """The kept connection, (re)opened when missing, after a fork, or when the file was replaced."""
        try:
            stat = os.stat(self.path)
            identity = (os.getpid(), stat.st_dev, stat.st_ino)
        except OSError:
            identity = None
        if self._conn is not None and identity == self._identity:
            if not os.access(self.path, os.W_OK):  # WAL would take records the log itself can never hold
                raise self._failed("cannot be written (the file is read-only)")
            return self._conn
        self.close()
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            conn = sqlite3.connect(self.path, timeout=30, isolation_level=None, check_same_thread=False)
        except (OSError, sqlite3.Error) as exc:
            raise self._failed("cannot be opened", exc) from None
        try:
            conn.execute("PRAGMA journal_mode=WAL")
            conn.execute("PRAGMA synchronous=FULL")  # the WAL is synced at every commit: no record lost on power loss
            self._key = self._prepare(conn)
            stat = os.stat(self.path)
        except AuditError as exc:  # a missing or foreign key, a broken old log: said as it is
            self._abandon(conn)
            self._failure = "cannot be used (" + str(exc).replace(str(self.path), "the log") + ")"
            raise
        except (OSError, sqlite3.Error) as exc:
            self._abandon(conn)
            raise self._failed("cannot be written", exc) from None
        self._conn, self._identity = conn, (os.getpid(), stat.st_dev, stat.st_ino)
        return conn

    def _prepare(self, conn: sqlite3.Connection) -> bytes:
        """Create the tables, or migrate an older log, and return the key (created with a new log)."""
        conn.execute("BEGIN IMMEDIATE")
        try:
            found = columns(conn)
            if found and layout(conn) < LAYOUT:
                from threatqa.audit_migrate import migrate  # only logs written before this layout need it

                # a keyed log must have its own key (checked first); one written before MACs gets one now
                key = self._key_for(conn) if "mac" in found else read_key(self.key_path) or create_key(self.key_path)
                migrate(conn, key, self.path)
            for statement in _STATEMENTS:
                conn.execute(statement)
            if layout(conn) != LAYOUT:  # a new log
                conn.execute(f"PRAGMA user_version = {LAYOUT}")
            key = self._key_for(conn)
            conn.execute("COMMIT")
        except BaseException:
            with contextlib.suppress(sqlite3.Error):
                conn.execute("ROLLBACK")
            raise
        return key

    def _key_for(self, conn: sqlite3.Connection) -> bytes:
        named = conn.execute("SELECT value FROM meta WHERE name = 'key_id'").fetchone()
        key = read_key(self.key_path)
        if named is None:
            key = key or create_key(self.key_path)
            conn.execute("INSERT INTO meta VALUES ('key_id', ?)", (key_id(key),))
        elif key is None:
            raise AuditError(
                f"audit log {self.path} is keyed (key id {named[0]}) but its key {self.key_path} is missing: "
                "restore the key file or set THREATQA_AUDIT_KEY to it"
            )
        elif key_id(key) != named[0]:
            raise AuditError(f"audit key {self.key_path} (id {key_id(key)}) is not the key of {self.path} "
                             f"(id {named[0]})")  # fmt: skip
        return key

    def _abandon(self, conn: sqlite3.Connection) -> None:
        """After a failed write: roll back and drop the connection; the next append opens a fresh one."""
        with contextlib.suppress(sqlite3.Error):
            conn.execute("ROLLBACK")
        if conn is self._conn:
            self.close()
        else:
            conn.close()

    def _failed(self, what: str, exc: BaseException | None = None) -> AuditError:
        """The error to raise; check() reports the same, without the path (OSError texts name it)."""
        detail = "" if exc is None else f" ({exc.strerror if isinstance(exc, OSError) else exc})"
        self._failure = what + detail
        return AuditError(f"audit log {self.path} {what}{detail}")

    def close(self) -> None:
        """Close the kept connection (the next append opens it again)."""
        conn, self._conn, self._identity = self._conn, None, None
        self._stored = {}
        if conn is not None:
            with contextlib.suppress(sqlite3.Error):
                conn.close()

    def migrate(self) -> tuple[int, int]:
        """Migrate an older log now (the first append would do it), then compact the file (VACUUM);
        returns its size in bytes before and after."""
        if not self.path.exists():
            raise AuditError(f"no audit log at {self.path}")
        before = self._size()
        with self._lock:
            conn = self._writer()
            try:
                conn.execute("VACUUM")
                conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
            except sqlite3.Error as exc:
                raise self._failed("cannot be compacted", exc) from None
        return before, self._size()

    def _size(self) -> int:
        return sum(p.stat().st_size for p in (self.path, Path(f"{self.path}-wal")) if p.exists())

    def check(self) -> str | None:
        """A cheap health check (no scan of the log; `verify_chain` does that): None when the log can
        take records, else what is wrong, without the file's path (it may be shown to users)."""
        if self._failure is not None:
            return f"the last audit record could not be written: the audit log {self._failure}"
        folder = next((p for p in (self.path.parent, *self.path.parent.parents) if p.exists()), Path("/"))
        if self.path.exists() and not (self.path.is_file() and os.access(self.path, os.W_OK)):
            return "the audit log is not writable (read-only, or not a file)"
        if not self.path.exists() and not (folder.is_dir() and os.access(folder, os.W_OK | os.X_OK)):
            return "the audit log cannot be created (a file stands where its folder should be, or it is read-only)"
        with contextlib.suppress(OSError):
            if shutil.disk_usage(folder).free < MIN_FREE_BYTES:
                return "the disk that holds the audit log is full"
        return self._damage()

    def _damage(self) -> str | None:
        try:
            if self._conn is not None:
                with self._lock:
                    if self._conn is not None:
                        self._conn.execute("SELECT seq FROM records ORDER BY seq DESC LIMIT 1").fetchone()
            elif self.path.exists():
                with self.path.open("rb") as head:
                    if self.path.stat().st_size and head.read(16) != b"SQLite format 3\x00":
                        return "the audit log is damaged (not an SQLite file)"
        except sqlite3.Error as exc:
            return f"the audit log is damaged ({exc})"
        except OSError as exc:
            return f"the audit log cannot be read ({exc.strerror})"
        return None

    # reading ------------------------------------------------------------------------------------

    @contextlib.contextmanager
    def _reader(self) -> Iterator[sqlite3.Connection]:
        if not self.path.exists():
            raise AuditError(f"no audit log at {self.path}")
        try:
            conn = sqlite3.connect(self.path, timeout=30, isolation_level=None)
        except sqlite3.Error as exc:
            raise AuditError(f"audit log {self.path} cannot be opened ({exc})") from None
        try:
            conn.row_factory = sqlite3.Row
            conn.text_factory = _lenient_text  # an edited record with bad UTF-8 is reported, not a crash
            yield conn
        except sqlite3.Error as exc:
            raise AuditError(f"audit log {self.path} cannot be read ({exc})") from None
        finally:
            conn.close()

    def get(self, record_id: str) -> AuditRecord:
        with self._reader() as conn:
            # by id, else by sequence number: two indexed lookups (`id = ? OR CAST(seq AS TEXT) = ?` read every record)
            found = conn.execute("SELECT * FROM records WHERE id = ?", (record_id,)).fetchone()
            if found is None and record_id.isascii() and record_id.isdigit() and str(int(record_id)) == record_id:
                found = conn.execute("SELECT * FROM records WHERE seq = ?", (int(record_id),)).fetchone()
            if found is None:
                raise AuditError(f"no audit record {record_id!r} in {self.path}")
            return _record(found, Texts(conn))

    def records(self, first: int | None = None, last: int | None = None, user: str | None = None) -> list[AuditRecord]:
        """Records with first <= seq <= last (either bound may be omitted), in order; with `user`, only
        the records that name that user."""
        bounds = (first if first is not None else 0, last if last is not None else 2**62)
        mine = " AND user = ?" if user is not None else ""
        with self._reader() as conn:
            rows = conn.execute(
                f"SELECT * FROM records WHERE seq >= ? AND seq <= ?{mine} ORDER BY seq",
                bounds + ((user,) if user is not None else ()),
            ).fetchall()
            texts = Texts(conn)
            return [_record(row, texts) for row in rows]

    def verify_chain(self, checkpoints: Sequence[Checkpoint] = (), use_key: bool = True) -> ChainReport:
        """Recompute every hash (and MAC) in order; report the first record that does not fit, or a
        checkpoint the log no longer reaches. `use_key=False` checks hashes and checkpoints only."""
        with self._reader() as conn:
            return verify(conn, self.path, self.key_path if use_key else None, list(checkpoints))


def _lenient_text(raw: bytes) -> str:
    return raw.decode("utf-8", "replace")


def _record(row: sqlite3.Row, texts: Texts) -> AuditRecord:
    values = {name: field_of(row, name) for name in AuditRecord.__dataclass_fields__}
    values |= {name: to_hex(values[name]) for name in ("prev_hash", "hash", "mac")}
    values["payload"] = payload_of(row, texts)
    return AuditRecord(**values)


def _stored_body(body: str, lean: bool, numbers: dict[str, int]) -> tuple[str | bytes, int]:
    """How a record's payload is stored, and its form (records.lean): a lean body compact and packed
    (or with its names, when the compact form would not give it back), else the JSON as it is."""
    if not lean:
        return body, WHOLE
    packed = audit_lean.compact(body, numbers)
    return (pack(packed, BODY_CODEC), NUMBERED) if packed is not None else (pack(body, BODY_CODEC), NAMED)
