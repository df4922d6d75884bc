"""The chunk store of an index version (part of the index stage): documents with their extracted
text, and passages by row number, in one SQLite file (`chunks.sqlite`, opened read-only) and the
documents' text beside it (`chunks.blocks`).

Document texts are kept in blocks of TEXT_BLOCK characters, each compressed alone (Brotli), one after
the other in `chunks.blocks`; the `blocks` table says where each is. So a passage read decompresses only
the one or two blocks it spans.

Every text the store hands out is checked as it is read: passages against `digests.npy` (16 bytes of
each passage's sha256, a small file whose own checksum is verified whenever the version opens) and
documents against the text hashes in the manifest. So a quote is exact even in an index too large
to checksum at every start, and a damaged store is refused instead of quoted.
"""

from __future__ import annotations

import hashlib
import json
import os
import sqlite3
import threading
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any, BinaryIO

import brotli
import numpy as np

from threatqa.chunking import Chunk
from threatqa.errors import IndexMismatch
from threatqa.ingest import Document, PageSpan

CHUNKS = "chunks.sqlite"
BLOCKS = "chunks.blocks"  # the compressed text blocks, beside CHUNKS
DIGESTS = "digests.npy"
DIGEST_BYTES = 16  # of each passage's sha256: collisions by accident are out of reach at any corpus size
# the chunks table's columns: the document by number, then Chunk's fields after its text, in order
_CHUNK_COLUMNS = ", ".join(["doc", *(f'"{f.name}"' for f in fields(Chunk) if f.name not in ("id", "doc_id", "text"))])
# characters of document text a block, compressed alone; a passage is cut from the one or two blocks it
# spans. Blocks of 1,024 / 2,048 / 4,096 characters took 0.55 / 0.50 / 0.47x their bytes with zlib and
# 13 / 21 / 36 us to decompress (2 shared cores), so 4,096. Brotli at quality 10 or 11 (whose built-in
# dictionary of common words and phrases suits short texts) took 0.34x on this corpus and 0.32x on real
# prose (zlib 0.47x and 0.42x), in the same time to decompress (33 us a block); blocks of documents whose
# text did not change are carried over from the previous version. Quality 10 compresses the benchmark's
# 1k corpus (415 KB) in 0.25 s to 0.354x, quality 11 in 0.58 s to 0.346x (9 and below: 0.02 s, 0.43x):
# made beside the embedding, those 0.33 s came out of the embedding's time on 2 cores (issue 17)
TEXT_BLOCK = 4096
QUALITY = 10
WINDOW = 16  # log2 of Brotli's window: 64 KB holds a block whole, and its decoder needs no more
BLOCKS_SQL = "SELECT key, offset, size FROM blocks"


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
    """Read access to one version's chunks.sqlite through one read-only connection, and to its text blocks
    through one file descriptor, shared by all threads (SQLite is built serialized; reads take well under a
    millisecond) so that a retired version's files are released as soon as the version is, not when each
    worker thread ends.

    `digests` (passage digests by row) and `text_sha256` (document id -> sha256 of its text) check what
    is read; a mismatch raises IndexMismatch."""

    def __init__(
        self, path: Path, digests: np.ndarray | None = None, text_sha256: dict[str, str] | None = None
    ) -> None:
        self.path = path
        self.blocks = path.with_name(BLOCKS)
        self.digests = digests
        self.text_sha256 = text_sha256 or {}
        self._lock = threading.Lock()
        self._conn: sqlite3.Connection | None = None
        self._blocks: BinaryIO | None = None  # BLOCKS, read with pread (closed with the store when not before)
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

    def _read(self, offset: int, size: int) -> bytes:
        """`size` bytes of the text blocks' file from `offset`; a file cut short is refused like any other damage.
        Read under the lock, so that close() cannot free the descriptor in the middle of a read."""
        with self._lock:
            try:
                if self._blocks is None:
                    self._blocks = open(self.blocks, "rb", buffering=0)  # noqa: SIM115 (kept open; closed by close())
                data = os.pread(self._blocks.fileno(), size, offset)
            except OSError as exc:
                raise IndexMismatch(
                    f"index file {self.blocks} cannot be read ({exc}); rebuild with `threatqa index`"
                ) from None
        if len(data) != size:
            raise IndexMismatch(f"index file {self.blocks} is truncated; rebuild with `threatqa index`")
        return data

    def close(self) -> None:
        """Release the files (a retired version); a later read reopens them."""
        with self._lock:
            if self._conn is not None:
                self._conn.close()
                self._conn = None
            if self._blocks is not None:
                self._blocks.close()
                self._blocks = None

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
        text = "".join(self._text(block) for block in self._stored(row["number"]))
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
        keys = sorted({key for r in rows for key in _block_keys(*found[r][:4])})
        found_blocks = self._query(f"{BLOCKS_SQL} WHERE key IN ({','.join('?' * len(keys))})", keys, rows=False)
        blocks = {key: self._text(self._read(offset, size)) for key, offset, size in found_blocks}
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

    def _stored(self, number: int) -> list[bytes]:
        """The text blocks of document `number` as stored (compressed), in order."""
        first = number << 32
        found = self._query(f"{BLOCKS_SQL} WHERE key BETWEEN ? AND ? ORDER BY key", (first, first | 0xFFFFFFFF), False)
        if not found:
            return []
        start = found[0][1]  # a document's blocks lie one after the other: one read
        data = self._read(start, found[-1][1] + found[-1][2] - start)
        return [data[offset - start : offset - start + size] for _key, offset, size in found]

    def stored_texts(self) -> dict[str, int]:
        """sha256 of each document's text -> its document number, for write_store to carry blocks over."""
        numbers = {doc_id: number for number, doc_id in self._numbers().items()}
        return {sha: numbers[doc_id] for doc_id, sha in self.text_sha256.items() if doc_id in numbers}

    def _text(self, block: bytes) -> str:
        """A stored text block's characters; a damaged block is refused like any other damage. Decompressed
        whole (Brotli decompressing only as far as a passage reaches was no faster) by a Decompressor, which
        lets other threads run meanwhile (brotli.decompress holds the GIL), in the same time (~35 us)."""
        try:
            inflate = brotli.Decompressor()
            text = inflate.process(block)
            if not inflate.is_finished():
                raise brotli.error("the block ends early")
            return text.decode("utf-8")
        except (brotli.error, UnicodeDecodeError) as exc:
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
    """A text block as stored: its UTF-8, Brotli-compressed."""
    return brotli.compress(text.encode("utf-8"), quality=QUALITY, lgwin=WINDOW)


def write_store(
    path: Path,
    documents: list[Document],
    chunks: list[Chunk],
    previous: ChunkStore | None = None,
    blocks: list[list[bytes]] | None = None,
) -> None:
    """Write documents and passages (rows in `chunks` order, a document's passages together) to a new
    chunks.sqlite, and their texts to BLOCKS beside it. Each text is stored once: documents' texts in
    compressed blocks of TEXT_BLOCK characters, and passages as offsets into them. The blocks of a text
    `previous` (a checked version's store) holds are copied from it, not compressed again. `blocks`:
    each document's, as `text_blocks` made them (a build makes them while it embeds)."""
    conn = sqlite3.connect(path)
    try:
        conn.executescript(
            """
            CREATE TABLE documents (number INTEGER PRIMARY KEY, id TEXT UNIQUE NOT NULL, path TEXT UNIQUE NOT NULL,
                title TEXT NOT NULL, sha256 TEXT NOT NULL, date TEXT, body_start INTEGER NOT NULL, pages TEXT NOT NULL,
                date_source TEXT, title_source TEXT, first_row INTEGER NOT NULL, passages INTEGER NOT NULL);
            CREATE TABLE blocks (key INTEGER PRIMARY KEY, offset INTEGER NOT NULL, size INTEGER NOT NULL);
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
            "INSERT INTO blocks VALUES (?, ?, ?)",
            _write_blocks(path.with_name(BLOCKS), blocks if blocks is not None else text_blocks(documents, previous)),
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


def text_blocks(
    documents: list[Document], previous: ChunkStore | None = None, stop: threading.Event | None = None
) -> list[list[bytes]]:
    """Each document's text blocks as stored: copied from `previous` where it holds the same text, checked
    to decompress to the text as it was read now (a few ms a MB), else compressed (about 0.6 MB/s). With
    `stop` set (the build failed or was interrupted), it ends at the next block, returning nothing."""
    carried = previous.stored_texts() if previous is not None else {}
    out = []
    for document in documents:
        source = carried.get(passage_sha256(document.text))
        blocks = _carried(previous, source, document.text) if previous is not None and source is not None else []
        if not blocks:
            for i in range(0, len(document.text), TEXT_BLOCK):
                if stop is not None and stop.is_set():
                    return []
                blocks.append(compress_block(document.text[i : i + TEXT_BLOCK]))
        out.append(blocks)
    return out


def _write_blocks(path: Path, blocks: list[list[bytes]]) -> list[tuple[int, int, int]]:
    """Every document's text blocks into `path`, one after the other; returns the rows of the blocks table
    (key: document number << 32 | block number; offset; size)."""
    rows, offset = [], 0
    with open(path, "wb") as out:
        for n, document_blocks in enumerate(blocks):
            for i, block in enumerate(document_blocks):
                out.write(block)
                rows.append(((n << 32) + i, offset, len(block)))
                offset += len(block)
    return rows


def _carried(previous: ChunkStore, number: int, text: str) -> list[bytes]:
    """The blocks `previous` stores of its document `number`, when they decompress to `text`; else none."""
    try:
        blocks = previous._stored(number)
        return blocks if "".join(brotli.decompress(b).decode("utf-8") for b in blocks) == text else []
    except (IndexMismatch, brotli.error, UnicodeDecodeError):
        return []
