"""The chunk store of an index version (part of the index stage): documents with their extracted
text, and passages by row number, in one SQLite file (`chunks.sqlite`), opened read-only.

Every text the store hands out is checked as it is read: passages against `digests.npy` (16 bytes of
each passage's sha256, a small file whose own checksum is verified whenever the version opens) and
documents against the text hashes in the manifest. So a quote is exact even in an index too large
to checksum at every start, and a damaged store is refused instead of quoted.
"""

from __future__ import annotations

import hashlib
import json
import sqlite3
import threading
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
_CHUNK_COLUMNS = ", ".join(f'"{f.name}"' for f in fields(Chunk))  # the chunks table has each, by name


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

    def documents(self) -> list[DocumentInfo]:
        query = (
            "SELECT d.id, d.path, d.title, d.sha256, d.date, COUNT(c.row) AS passages, d.date_source, d.title_source "
            "FROM documents d LEFT JOIN chunks c ON c.doc_id = d.id GROUP BY d.id ORDER BY d.path"
        )
        return [DocumentInfo(**dict(row)) for row in self._query(query)]

    def document(self, doc_id: str) -> Document:
        found = self._query("SELECT * FROM documents WHERE id = ?", (doc_id,))
        if not found:
            raise KeyError(doc_id)
        row = found[0]
        expected = self.text_sha256.get(doc_id)
        if expected is not None and passage_sha256(row["text"]) != expected:
            raise self._damaged(f"the text of document {row['path']}")
        pages = tuple(PageSpan(*p) for p in json.loads(row["pages"]))
        return Document(
            id=row["id"], path=row["path"], title=row["title"], sha256=row["sha256"], date=row["date"],
            text=row["text"], body_start=row["body_start"], pages=pages, date_source=row["date_source"],
            title_source=row["title_source"],
        )  # fmt: skip

    def chunks(self, rows: list[int]) -> list[Chunk]:
        """Passages by row number, in the order asked."""
        if not rows:
            return []
        query = f"SELECT row, {_CHUNK_COLUMNS} FROM chunks WHERE row IN ({','.join('?' * len(rows))})"
        found = {row[0]: row[1:] for row in self._query(query, [int(r) for r in rows], rows=False)}
        chunks = [Chunk(*found[r]) for r in rows]  # plain tuples, in Chunk's field order
        if self.digests is not None:
            for r, chunk in zip(rows, chunks):
                if bytes(self.digests[r]) != hashlib.sha256(chunk.text.encode("utf-8")).digest()[:DIGEST_BYTES]:
                    raise self._damaged(f"passage {r}")
        return chunks

    def rows_for_documents(self, doc_ids_or_paths: list[str]) -> np.ndarray:
        """Row numbers of every passage of the given documents (ids or paths)."""
        marks = ",".join("?" * len(doc_ids_or_paths))
        query = (
            "SELECT c.row FROM chunks c JOIN documents d ON d.id = c.doc_id "
            f"WHERE d.id IN ({marks}) OR d.path IN ({marks})"
        )
        params = list(doc_ids_or_paths) * 2
        return np.array([r[0] for r in self._query(query, params, rows=False)], dtype=np.int64)


def write_store(path: Path, documents: list[Document], chunks: list[Chunk]) -> None:
    """Write documents and passages (rows in `chunks` order) to a new chunks.sqlite."""
    conn = sqlite3.connect(path)
    try:
        conn.executescript(
            """
            CREATE TABLE documents (id TEXT PRIMARY KEY, path TEXT UNIQUE NOT NULL, title TEXT NOT NULL,
                sha256 TEXT NOT NULL, date TEXT, body_start INTEGER NOT NULL, pages TEXT NOT NULL, text TEXT NOT NULL,
                date_source TEXT, title_source TEXT);
            CREATE TABLE chunks (row INTEGER PRIMARY KEY, id TEXT UNIQUE NOT NULL,
                doc_id TEXT NOT NULL REFERENCES documents(id), ordinal INTEGER NOT NULL, start INTEGER NOT NULL,
                "end" INTEGER NOT NULL, paragraph INTEGER NOT NULL, paragraph_end INTEGER NOT NULL,
                line_start INTEGER NOT NULL, line_end INTEGER NOT NULL,
                page INTEGER, page_end INTEGER, sha256 TEXT NOT NULL, text TEXT NOT NULL);
            CREATE INDEX chunks_doc ON chunks(doc_id);
            """
        )
        conn.executemany(
            "INSERT INTO documents VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            [
                (d.id, d.path, d.title, d.sha256, d.date, d.body_start,
                 json.dumps([list(p.__dict__.values()) for p in d.pages]), d.text, d.date_source, d.title_source)
                for d in documents
            ],
        )  # fmt: skip
        conn.executemany(
            "INSERT INTO chunks VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            [
                (row, c.id, c.doc_id, c.ordinal, c.start, c.end, c.paragraph, c.paragraph_end, c.line_start,
                 c.line_end, c.page, c.page_end, passage_sha256(c.text), c.text)
                for row, c in enumerate(chunks)
            ],
        )  # fmt: skip
        conn.commit()
    finally:
        conn.close()
