"""How the audit log lays out its records and texts in SQLite: digests as 32-byte BLOBs, texts by
number, and compression with preset dictionaries.

A record's chain hash is over its lean body, which names every text by SHA-256 (`audit_lean`). The
log stores that body *compact*: each name replaced by the number of the text's row in the `texts`
table (a few bytes instead of 64). A name comes back as the SHA-256 of the row's text, so the hash
still covers every text a record names: a text altered, swapped for another or deleted no longer
gives the body its hash. Each row also keeps the first 8 bytes of its text's name (`key`, indexed),
to find a text already stored and to tell an altered text from a record that was edited.

Layouts (PRAGMA user_version): 0, logs written before this one (digests as hexadecimal text,
texts keyed by their hexadecimal name); 1, this one. `audit_migrate` brings a log to layout 1.
"""

from __future__ import annotations

import contextlib
import re
import sqlite3
import zlib

from threatqa.audit_lean import sha256_text

LAYOUT = 1
TABLES = [
    """CREATE TABLE IF NOT EXISTS records (
        seq INTEGER PRIMARY KEY, id TEXT UNIQUE NOT NULL, time TEXT NOT NULL, kind TEXT NOT NULL,
        user TEXT, channel TEXT NOT NULL, question TEXT NOT NULL, payload NOT NULL,
        prev_hash BLOB NOT NULL, hash BLOB NOT NULL, format INTEGER NOT NULL, lean INTEGER NOT NULL, mac BLOB)""",
    "CREATE TABLE IF NOT EXISTS texts (id INTEGER PRIMARY KEY, key INTEGER NOT NULL, text NOT NULL)",
    "CREATE INDEX IF NOT EXISTS texts_by_key ON texts (key)",
    "CREATE TABLE IF NOT EXISTS meta (name TEXT PRIMARY KEY, value TEXT NOT NULL) WITHOUT ROWID",
]
WHOLE, NAMED, NUMBERED = 0, 1, 2  # records.lean: the payload as JSON; a lean body naming texts by SHA-256; by number

# Codecs: the first byte of a compressed value, then raw DEFLATE (no zlib header or checksum: each
# value is checked against its hash). Bodies use a preset dictionary, a typical body, so that a short
# one finds its keys there. A dictionary is part of the values written with it: never change one,
# add a codec.
ZLIB = 0x78  # a zlib stream (the first byte of its header): values written in layout 0
TEXT_CODEC, BODY_CODEC = 1, 2
_BODY = (
    '{"f":{"answered":true,"mode":"lexical","notices":[],"index_version":"v-","model":null,"searched":{"#":#1},'
    '"policy_version":null,"settings":{"#":#2}},"q":true,"i":true,"p":{"c":#3,"d":[#4,#5,#6],"r":[[0,#7,1,1.0,'
    '1.0,1.0,null,null,null,null,null,null,null,null,null,{"@":[[0,null,null,null,null,null,null,null]]},'
    '", undated, para "]],"a":#8}}'
)
_DICTIONARIES = {TEXT_CODEC: b"", BODY_CODEC: _BODY.encode("utf-8")}
_HEX_DIGEST = re.compile(r"[0-9a-f]{64}")


def pack(text: str, codec: int = TEXT_CODEC) -> str | bytes:
    """What the log stores for `text`: the codec's byte and the compressed text when shorter, else the text."""
    raw, dictionary = text.encode("utf-8"), _DICTIONARIES[codec]
    if dictionary:
        deflate = zlib.compressobj(6, zlib.DEFLATED, -15, 8, zlib.Z_DEFAULT_STRATEGY, dictionary)
        packed = bytes([codec]) + deflate.compress(raw) + deflate.flush()
    else:
        packed = bytes([codec]) + zlib.compress(raw, 6, -15)
    return packed if len(packed) < len(raw) else text


def unpack(value: str | bytes) -> str:
    """The text a stored value holds (either layout); zlib.error when it cannot be inflated."""
    if isinstance(value, str):
        return value
    if value[:1] == bytes([ZLIB]):
        return zlib.decompress(value).decode("utf-8")
    dictionary = _DICTIONARIES.get(value[0]) if value else None
    if dictionary is None:
        raise zlib.error(f"unknown codec {value[:1]!r}")
    inflate = zlib.decompressobj(-15, zdict=dictionary)
    raw = inflate.decompress(value[1:]) + inflate.flush()
    if not inflate.eof or inflate.unused_data:
        raise zlib.error("a truncated or padded stream")
    return raw.decode("utf-8")


def to_blob(digest: str) -> bytes | str:
    """A SHA-256 as stored: 32 bytes for the 64 lowercase hexadecimal characters it is written as, any
    other value (an edited record's) kept as it is, so that it reads back the same."""
    return bytes.fromhex(digest) if _HEX_DIGEST.fullmatch(digest) else digest


def to_hex(value: bytes | str | None) -> str | None:
    """A stored digest as hexadecimal text (a layout-0 log stores it so already)."""
    return value.hex() if isinstance(value, bytes) else value


def layout(conn: sqlite3.Connection) -> int:
    return int(conn.execute("PRAGMA user_version").fetchone()[0])


def key_of(name: str) -> int:
    """A text's key: the first 8 bytes of its name, as SQLite's signed 64-bit integer."""
    return int.from_bytes(bytes.fromhex(name[:16]), "big", signed=True)


class TextProblem(Exception):
    """A text a record names that the log no longer holds as it was stored."""


class Texts:
    """A log's texts, read by number (layout 1) or by name (either layout) through one connection,
    and added (`add`); each text read is checked against its name or key."""

    RECENT = 1024  # texts kept after reading: a record's, which its payload then takes by name

    def __init__(self, conn: sqlite3.Connection, numbered: bool | None = None) -> None:
        """`numbered`: whether the log is of this layout (None: read from the log)."""
        self._conn = conn
        self._numbered = layout(conn) >= 1 if numbered is None else numbered
        self._names: dict[int, str] = {}  # numbers read and checked -> names
        self._held: set[str] = set()  # names read and checked
        self._recent: dict[str, str] = {}

    def name(self, number: int) -> str:
        """The SHA-256 of text `number`; TextProblem when it is missing or not the text it was stored as."""
        name = self._names.get(number)
        if name is None:
            if not (self._numbered and 0 < number < 2**63):  # a layout-0 log numbers no texts
                raise TextProblem(f"missing (text {number})")
            row = self._conn.execute("SELECT key, text FROM texts WHERE id = ?", (number,)).fetchone()
            if row is None:
                raise TextProblem(f"missing (text {number})")
            try:
                text = unpack(row[1])
            except (zlib.error, UnicodeDecodeError):
                raise TextProblem(f"altered (text {number} cannot be read)") from None
            name = sha256_text(text)
            if key_of(name) != row[0]:
                stored = (row[0] & (2**64 - 1)).to_bytes(8, "big").hex() if isinstance(row[0], int) else row[0]
                raise TextProblem(f"altered (text {number}, stored with sha256 {stored}...)")
            self._names[number] = name
            self._remember(name, text)
        return name

    def text(self, name: str) -> str:
        """The text whose SHA-256 is `name`; KeyError when the log holds none."""
        text = self._recent.get(name)
        if text is None:
            if not isinstance(name, str) or not _HEX_DIGEST.fullmatch(name):
                raise KeyError(name)
            text = next((t for t in self._candidates(name) if sha256_text(t) == name), None)
            if text is None:
                raise KeyError(name)
            self._remember(name, text)
        return text

    def holds(self, name: str) -> bool:
        """Whether the log holds the text named `name` (each name read once)."""
        if name not in self._held:
            try:
                self.text(name)
            except KeyError:
                return False
        return True

    def add(self, texts: dict[str, tuple[str, str | bytes]]) -> dict[str, int]:
        """The numbers of `texts` (name: the text and how it is stored), those the log lacks added now;
        inside a write transaction (the new rows are numbered after the last)."""
        numbers: dict[str, int] = {}
        names = list(texts)
        for at in range(0, len(names), 500):
            keys = {key_of(name): name for name in names[at : at + 500]}
            query = f"SELECT id, key, text FROM texts WHERE key IN ({','.join('?' * len(keys))})"
            for number, key, value in self._conn.execute(query, list(keys)).fetchall():
                name = keys[key]
                with contextlib.suppress(zlib.error, UnicodeDecodeError):  # an altered copy: stored anew
                    if name not in numbers and unpack(value) == texts[name][0]:
                        numbers[name] = int(number)
        missing = [name for name in names if name not in numbers]
        if missing:
            last = self._conn.execute("SELECT max(id) FROM texts").fetchone()[0] or 0
            numbers |= {name: last + n for n, name in enumerate(missing, start=1)}
            rows = [(numbers[name], key_of(name), texts[name][1]) for name in missing]
            self._conn.executemany("INSERT INTO texts VALUES (?, ?, ?)", rows)
        return numbers

    def _candidates(self, name: str) -> list[str]:
        if self._numbered:
            rows = self._conn.execute("SELECT text FROM texts WHERE key = ?", (key_of(name),)).fetchall()
        else:
            rows = self._conn.execute("SELECT text FROM texts WHERE sha256 = ?", (name,)).fetchall()
        found = []
        for (value,) in rows:
            try:
                found.append(unpack(value))
            except (zlib.error, UnicodeDecodeError, TypeError):
                continue
        return found

    def _remember(self, name: str, text: str) -> None:
        if len(self._recent) >= self.RECENT:
            self._recent.clear()
        self._recent[name] = text
        self._held.add(name)
