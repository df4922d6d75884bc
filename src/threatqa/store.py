"""The chunk store of an index version (part of the index stage): documents with their extracted
text, and passages by row number, in one SQLite file (`chunks.sqlite`), opened read-only."""

from __future__ import annotations

import hashlib
import json
import sqlite3
import threading
from dataclasses import dataclass, fields
from pathlib import Path

import numpy as np

from threatqa.chunking import Chunk
from threatqa.ingest import Document, PageSpan

CHUNKS = "chunks.sqlite"
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


def passage_sha256(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


class ChunkStore:
    """Read access to one version's chunks.sqlite, one read-only connection per thread."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._local = threading.local()

    def _db(self) -> sqlite3.Connection:
        # sqlite3 connections must not cross threads
        conn = getattr(self._local, "conn", None)
        if conn is None:
            conn = sqlite3.connect(f"file:{self.path}?mode=ro", uri=True, check_same_thread=False)
            conn.row_factory = sqlite3.Row
            self._local.conn = conn
        return conn

    def documents(self) -> list[DocumentInfo]:
        query = (
            "SELECT d.id, d.path, d.title, d.sha256, d.date, COUNT(c.row) AS passages "
            "FROM documents d LEFT JOIN chunks c ON c.doc_id = d.id GROUP BY d.id ORDER BY d.path"
        )
        return [DocumentInfo(**dict(row)) for row in self._db().execute(query)]

    def document(self, doc_id: str) -> Document:
        row = self._db().execute("SELECT * FROM documents WHERE id = ?", (doc_id,)).fetchone()
        if row is None:
            raise KeyError(doc_id)
        pages = tuple(PageSpan(*p) for p in json.loads(row["pages"]))
        return Document(
            id=row["id"], path=row["path"], title=row["title"], sha256=row["sha256"], date=row["date"],
            text=row["text"], body_start=row["body_start"], pages=pages,
        )  # fmt: skip

    def chunks(self, rows: list[int]) -> list[Chunk]:
        """Passages by row number, in the order asked."""
        if not rows:
            return []
        cursor = self._db().cursor()
        cursor.row_factory = None  # plain tuples, in Chunk's field order
        query = f"SELECT row, {_CHUNK_COLUMNS} FROM chunks WHERE row IN ({','.join('?' * len(rows))})"
        found = {row[0]: row[1:] for row in cursor.execute(query, [int(r) for r in rows])}
        return [Chunk(*found[r]) for r in rows]

    def rows_for_documents(self, doc_ids_or_paths: list[str]) -> np.ndarray:
        """Row numbers of every passage of the given documents (ids or paths)."""
        marks = ",".join("?" * len(doc_ids_or_paths))
        query = (
            "SELECT c.row FROM chunks c JOIN documents d ON d.id = c.doc_id "
            f"WHERE d.id IN ({marks}) OR d.path IN ({marks})"
        )
        params = list(doc_ids_or_paths) * 2
        return np.array([r[0] for r in self._db().execute(query, params)], dtype=np.int64)


def write_store(path: Path, documents: list[Document], chunks: list[Chunk]) -> None:
    """Write documents and passages (rows in `chunks` order) to a new chunks.sqlite."""
    conn = sqlite3.connect(path)
    try:
        conn.executescript(
            """
            CREATE TABLE documents (id TEXT PRIMARY KEY, path TEXT UNIQUE NOT NULL, title TEXT NOT NULL,
                sha256 TEXT NOT NULL, date TEXT, body_start INTEGER NOT NULL, pages TEXT NOT NULL, text TEXT NOT NULL);
            CREATE TABLE chunks (row INTEGER PRIMARY KEY, id TEXT UNIQUE NOT NULL,
                doc_id TEXT NOT NULL REFERENCES documents(id), ordinal INTEGER NOT NULL, start INTEGER NOT NULL,
                "end" INTEGER NOT NULL, paragraph INTEGER NOT NULL, paragraph_end INTEGER NOT NULL,
                line_start INTEGER NOT NULL, line_end INTEGER NOT NULL,
                page INTEGER, page_end INTEGER, sha256 TEXT NOT NULL, text TEXT NOT NULL);
            CREATE INDEX chunks_doc ON chunks(doc_id);
            """
        )
        conn.executemany(
            "INSERT INTO documents VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
            [
                (d.id, d.path, d.title, d.sha256, d.date, d.body_start,
                 json.dumps([list(p.__dict__.values()) for p in d.pages]), d.text)
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
