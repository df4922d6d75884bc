"""The chunk store of an index version (part of the index stage): documents with their extracted
text, and passages by row number, in one SQLite file (`chunks.sqlite`), opened read-only.

Document texts are kept in blocks of TEXT_BLOCK characters, each compressed alone (zlib), so a passage
read decompresses only the one or two blocks it spans.

Every text the store hands out is checked as it is read: passages against `digests.npy` (16 bytes of
each passage's sha256, a small file whose own checksum is verified whenever the version opens) and
documents against the text hashes in the manifest. So a quote is exact even in an index too large
to checksum at every start, and a damaged store is refused instead of quoted.
"""

from __future__ import annotations

import codecs
import hashlib
import json
import sqlite3
import threading
import zlib
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

import numpy as np

from threatqa.chunking import Chunk
from threatqa.errors import IndexMismatch
from threatqa.ingest import Document, PageSpan

CHUNKS = "chunks.sqlite"
DIGESTS = "digests.npy"
DIGEST_BYTES = 16  # of each passage's sha256: collisions by accident are out of reach at any corpus size
# the chunks table's columns: the document by number, then Chunk's fields after its text, in order
_CHUNK_COLUMNS = ", ".join(["doc", *(f'"{f.name}"' for f in fields(Chunk) if f.name not in ("id", "doc_id", "text"))])
# characters of document text a row, compressed alone; a passage is cut from the one or two blocks it
# spans. Compressed (zlib, the same at any level from 6 up), blocks of 1,024 / 2,048 / 4,096 characters
# took 0.55 / 0.50 / 0.47x their bytes and 13 / 21 / 36 us to decompress (2 shared cores); at 100k
# passages the store was 0.70x the text with 2,048 (SQLite's cost a row counts too) and 0.60x with 4,096
TEXT_BLOCK = 4096
COMPRESSION = 9


@dataclass(frozen=True)
class DocumentInfo:
    """A document as the index knows it (without its text)."""

    id: str
    path: str
    title: str
    sha256: str
    date: str | None
    passages: int
    date_source: str | None = None  # where the date was found (ingest_meta's order of evidence)
    title_source: str | None = None


def passage_sha256(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def passage_digests(texts: list[str]) -> np.ndarray:
    """The first DIGEST_BYTES of each text's sha256, one row per text (written as digests.npy)."""
    out = np.zeros((len(texts), DIGEST_BYTES), dtype=np.uint8)
    for row, text in enumerate(texts):
        out[row] = np.frombuffer(hashlib.sha256(text.encode("utf-8")).digest()[:DIGEST_BYTES], dtype=np.uint8)
    return out


class ChunkStore:
    """Read access to one version's chunks.sqlite through one read-only connection, shared by all threads
    (SQLite is built serialized; reads take well under a millisecond) so that a retired version's file
    is released as soon as the version is, not when each worker thread ends.

    `digests` (passage digests by row) and `text_sha256` (document id -> sha256 of its text) check what
    is read; a mismatch raises IndexMismatch."""

    def __init__(
        self, path: Path, digests: np.ndarray | None = None, text_sha256: dict[str, str] | None = None
    ) -> None:
        self.path = path
        self.digests = digests
        self.text_sha256 = text_sha256 or {}
        self._lock = threading.Lock()
        self._conn: sqlite3.Connection | None = None
        self._ids: dict[int, str] | None = None

    def _query(self, sql: str, params: list[object] | tuple[object, ...] = (), rows: bool = True) -> list[Any]:
        with self._lock:
            if self._conn is None:
                self._conn = sqlite3.connect(f"file:{self.path}?mode=ro", uri=True, check_same_thread=False)
            cursor = self._conn.cursor()
            cursor.row_factory = sqlite3.Row if rows else None
            try:
                return cursor.execute(sql, params).fetchall()
            except sqlite3.DatabaseError as exc:  # a damaged file: refused like any other damage
                raise IndexMismatch(
                    f"index file {self.path} cannot be read ({exc}); rebuild with `threatqa index`"
                ) from None

    def close(self) -> None:
        """Release the file (a retired version); a later read reopens it."""
        with self._lock:
            if self._conn is not None:
                self._conn.close()
                self._conn = None

    def _damaged(self, what: str) -> IndexMismatch:
        return IndexMismatch(f"{what} in {self.path.parent.name} does not match its checksum: the index is damaged")

    def _numbers(self) -> dict[int, str]:
        """Document number -> id (the chunks table names documents by number)."""
        if self._ids is None:
            self._ids = {row[0]: row[1] for row in self._query("SELECT number, id FROM documents", rows=False)}
        return self._ids

    def documents(self) -> list[DocumentInfo]:
        query = "SELECT id, path, title, sha256, date, passages, date_source, title_source FROM documents ORDER BY path"
        return [DocumentInfo(**dict(row)) for row in self._query(query)]

    def document(self, doc_id: str) -> Document:
        found = self._query("SELECT * FROM documents WHERE id = ?", (doc_id,))
        if not found:
            raise KeyError(doc_id)
        row = found[0]
        first = row["number"] << 32
        blocks = self._query(
            "SELECT text FROM texts WHERE key BETWEEN ? AND ? ORDER BY key", (first, first | 0xFFFFFFFF), rows=False
        )
        text = "".join(self._text(block[0]) for block in blocks)
        expected = self.text_sha256.get(doc_id)
        if expected is not None and passage_sha256(text) != expected:
            raise self._damaged(f"the text of document {row['path']}")
        pages = tuple(PageSpan(*p) for p in json.loads(row["pages"]))
        return Document(
            id=row["id"], path=row["path"], title=row["title"], sha256=row["sha256"], date=row["date"],
            text=text, body_start=row["body_start"], pages=pages, date_source=row["date_source"],
            title_source=row["title_source"],
        )  # fmt: skip

    def chunks(self, rows: list[int]) -> list[Chunk]:
        """Passages by row number, in the order asked; each text is cut from its document's blocks."""
        if not rows:
            return []
        query = f"SELECT row, {_CHUNK_COLUMNS} FROM chunks WHERE row IN ({','.join('?' * len(rows))})"
        found = {row[0]: row[1:] for row in self._query(query, [int(r) for r in rows], rows=False)}
        # characters wanted of each block: a block is decompressed only as far as its passages reach
        wanted: dict[int, int] = {}
        for r in rows:
            number, ordinal, start, end = found[r][:4]
            for key in _block_keys(number, ordinal, start, end):
                reach = min(TEXT_BLOCK, end - (key - (number << 32)) * TEXT_BLOCK)
                wanted[key] = max(wanted.get(key, 0), reach)
        keys = sorted(wanted)
        found_blocks = self._query(
            f"SELECT key, text FROM texts WHERE key IN ({','.join('?' * len(keys))})", keys, rows=False
        )
        blocks = {key: self._text(block, wanted[key]) for key, block in found_blocks}
        ids, chunks = self._numbers(), []
        for r in rows:
            number, ordinal, start, end, *rest = found[r]
            first = start // TEXT_BLOCK
            text = "".join(blocks[key] for key in _block_keys(number, ordinal, start, end))
            text = text[start - first * TEXT_BLOCK : end - first * TEXT_BLOCK]
            doc_id = ids[number]
            chunk = Chunk(f"{doc_id}:{ordinal}", doc_id, ordinal, text, start, end, *rest)
            digest = hashlib.sha256(text.encode("utf-8")).digest()[:DIGEST_BYTES]
            if self.digests is not None and bytes(self.digests[r]) != digest:
                raise self._damaged(f"passage {r}")
            chunks.append(chunk)
        return chunks

    def _text(self, block: bytes, wanted: int = TEXT_BLOCK) -> str:
        """A stored text block's characters, at least its first `wanted` (a passage needs the block only up
        to its end: decompressing no further saved a third of a passage read); a damaged block is refused
        like any other damage."""
        try:
            inflate, utf8 = zlib.decompressobj(), codecs.getincrementaldecoder("utf-8")()
            text = utf8.decode(inflate.decompress(block, wanted))  # UTF-8 takes a byte or more a character
            while len(text) < wanted and not inflate.eof:
                more = inflate.decompress(inflate.unconsumed_tail, 4 * (wanted - len(text))) or inflate.flush()
                if not more:
                    raise zlib.error("the block ends early")
                text += utf8.decode(more)
            return text
        except (zlib.error, UnicodeDecodeError, TypeError) as exc:
            raise IndexMismatch(
                f"a text block in {self.path} cannot be read ({exc}); rebuild with `threatqa index`"
            ) from None

    def rows_for_documents(self, doc_ids_or_paths: list[str]) -> np.ndarray:
        """Row numbers of every passage of the given documents (ids or paths): each document's
        passages are consecutive rows."""
        marks = ",".join("?" * len(doc_ids_or_paths))
        query = f"SELECT first_row, passages FROM documents WHERE id IN ({marks}) OR path IN ({marks})"
        spans = self._query(query, list(doc_ids_or_paths) * 2, rows=False)
        parts = [np.arange(first, first + count, dtype=np.int64) for first, count in spans]
        return np.sort(np.concatenate(parts)) if parts else np.zeros(0, dtype=np.int64)


def _block_keys(number: int, ordinal: int, start: int, end: int) -> range:
    """Keys of the text blocks that hold characters start..end of document `number`."""
    base = number << 32
    return range(base + start // TEXT_BLOCK, base + max(start, end - 1) // TEXT_BLOCK + 1)


def compress_block(text: str) -> bytes:
    """A text block as stored: its UTF-8, zlib-compressed."""
    return zlib.compress(text.encode("utf-8"), COMPRESSION)


def write_store(path: Path, documents: list[Document], chunks: list[Chunk]) -> None:
    """Write documents and passages (rows in `chunks` order, a document's passages together) to a new
    chunks.sqlite. Each text is stored once: documents' texts in compressed blocks of TEXT_BLOCK
    characters, and passages as offsets into them."""
    conn = sqlite3.connect(path)
    try:
        conn.executescript(
            """
            CREATE TABLE documents (number INTEGER PRIMARY KEY, id TEXT UNIQUE NOT NULL, path TEXT UNIQUE NOT NULL,
                title TEXT NOT NULL, sha256 TEXT NOT NULL, date TEXT, body_start INTEGER NOT NULL, pages TEXT NOT NULL,
                date_source TEXT, title_source TEXT, first_row INTEGER NOT NULL, passages INTEGER NOT NULL);
            CREATE TABLE texts (key INTEGER PRIMARY KEY, text BLOB NOT NULL);
            CREATE TABLE chunks (row INTEGER PRIMARY KEY, doc INTEGER NOT NULL, ordinal INTEGER NOT NULL,
                start INTEGER NOT NULL, "end" INTEGER NOT NULL, paragraph INTEGER NOT NULL,
                paragraph_end INTEGER NOT NULL, line_start INTEGER NOT NULL, line_end INTEGER NOT NULL,
                page INTEGER, page_end INTEGER);
            """
        )
        number = {d.id: n for n, d in enumerate(documents)}
        first_row: dict[str, int] = {}
        counts: dict[str, int] = {}
        for row, chunk in enumerate(chunks):
            first_row.setdefault(chunk.doc_id, row)
            counts[chunk.doc_id] = counts.get(chunk.doc_id, 0) + 1
            if row != first_row[chunk.doc_id] + counts[chunk.doc_id] - 1:
                raise ValueError(f"passages of document {chunk.doc_id} are not consecutive rows")
        conn.executemany(
            "INSERT INTO documents VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            [
                (n, d.id, d.path, d.title, d.sha256, d.date, d.body_start,
                 json.dumps([list(p.__dict__.values()) for p in d.pages]), d.date_source, d.title_source,
                 first_row.get(d.id, 0), counts.get(d.id, 0))
                for n, d in enumerate(documents)
            ],
        )  # fmt: skip
        conn.executemany(
            "INSERT INTO texts VALUES (?, ?)",
            (
                ((number[d.id] << 32) + i // TEXT_BLOCK, compress_block(d.text[i : i + TEXT_BLOCK]))
                for d in documents
                for i in range(0, len(d.text), TEXT_BLOCK)
            ),
        )
        conn.executemany(
            "INSERT INTO chunks VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            [
                (row, number[c.doc_id], c.ordinal, c.start, c.end, c.paragraph, c.paragraph_end, c.line_start,
                 c.line_end, c.page, c.page_end)
                for row, c in enumerate(chunks)
            ],
        )  # fmt: skip
        conn.commit()
    finally:
        conn.close()
