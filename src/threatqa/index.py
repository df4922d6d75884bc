"""Stage 4: passages (+ vectors) -> the index folder, written atomically and incrementally.

Layout of the index folder:

    CURRENT            name of the live version folder (replaced atomically)
    v-<id>/            one complete, immutable version
        manifest.json  schema, model, retrievers, documents, checksums (written last)
        chunks.sqlite  documents (with their extracted text) and passages (offsets only)
        dense.faiss    inner-product index over normalised vectors (absent in lexical mode): exact
                       (Flat) up to `DenseConfig.ann_threshold` passages, approximate (IVF + 8-bit
                       scalar quantisation) above it
        vectors.npy    float16 copy of the vectors beside an approximate index, which cannot give
                       them back exactly; incremental builds reuse them
        bm25/          BM25 matrix and vocabulary

A build writes a new version beside the live one and only then switches CURRENT, so a build
killed at any point leaves the previous version loadable. The previous version is kept, so a
server that opened it keeps working while the next build lands.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import os
import shutil
import sqlite3
import sys
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path

import numpy as np

from threatqa.chunking import Chunk, ChunkConfig, chunk_documents
from threatqa.embeddings import Embedder
from threatqa.errors import IndexMismatch, IndexMissing
from threatqa.ingest import Document, PageSpan, file_sha256, iter_files, load_documents
from threatqa.lexical import LexicalIndex

# 2: passages keep their own text; 3: lexical views as BM25 matrices by stem / by passage;
# 4: one character view, stored by sentence, with each n-gram's weight in the sentence and the passage
SCHEMA_VERSION = 4
CURRENT = "CURRENT"
MANIFEST = "manifest.json"
CHUNKS = "chunks.sqlite"
DENSE = "dense.faiss"
VECTORS = "vectors.npy"
BM25_DIR = "bm25"
VERIFY_CHECKSUMS_BELOW = 256 * 1024 * 1024  # bytes; larger indexes are checked by size only at load
_CHUNK_COLUMNS = ", ".join(f'"{f.name}"' for f in fields(Chunk))  # the chunks table has each, by name


@dataclass(frozen=True)
class DenseConfig:
    """How the dense index is built: exact search up to `ann_threshold` passages, IVF-SQ8 above.

    Measured on 384-d clustered vectors (benchmarks/ann.py): exact search costs about 0.15 ms per
    thousand passages a question, so it stays under 2-3 ms up to the default threshold."""

    ann_threshold: int = 20000
    nprobe: int = 32


@dataclass(frozen=True)
class DocumentInfo:
    """A document as the index knows it (without its text)."""

    id: str
    path: str
    title: str
    sha256: str
    date: str | None
    passages: int


@dataclass(frozen=True)
class Manifest:
    id: str
    schema_version: int
    created: str
    model: str | None
    dimension: int | None
    retrievers: tuple[str, ...]
    chunking: dict[str, int]
    documents: dict[str, dict[str, object]]
    chunk_count: int
    files: dict[str, dict[str, object]]
    inputs: str  # input_fingerprint() of the docs folder this version was built from

    @classmethod
    def from_json(cls, data: dict[str, object]) -> Manifest:
        values = {name: data[name] for name in cls.__dataclass_fields__}
        values["retrievers"] = tuple(values["retrievers"])  # type: ignore[arg-type]
        return cls(**values)  # type: ignore[arg-type]

    def to_json(self) -> dict[str, object]:
        return {name: getattr(self, name) for name in self.__dataclass_fields__} | {"retrievers": list(self.retrievers)}


@dataclass(frozen=True)
class BuildReport:
    """What an `index` run did."""

    version: str
    changed: bool
    documents: int
    passages: int
    added: tuple[str, ...] = ()
    updated: tuple[str, ...] = ()
    removed: tuple[str, ...] = ()
    embedded: int = 0
    reused: int = 0
    mode: str = "lexical"
    warnings: tuple[str, ...] = field(default=())


class Index:
    """One opened, immutable index version: chunk store, BM25 and (optionally) FAISS."""

    def __init__(
        self,
        folder: Path,
        manifest: Manifest,
        lexical: LexicalIndex,
        dense: object | None,
        stored_vectors: np.ndarray | None = None,
    ) -> None:
        self.folder = folder
        self.manifest = manifest
        self.lexical = lexical
        self.dense = dense
        self.stored_vectors = stored_vectors  # memory-mapped float16, beside an approximate index
        self._local = threading.local()

    @property
    def version(self) -> str:
        return self.manifest.id

    @property
    def has_dense(self) -> bool:
        return self.dense is not None

    def __len__(self) -> int:
        return self.manifest.chunk_count

    def _db(self) -> sqlite3.Connection:
        # one read-only connection per thread: sqlite3 connections must not cross threads
        conn = getattr(self._local, "conn", None)
        if conn is None:
            conn = sqlite3.connect(f"file:{self.folder / CHUNKS}?mode=ro", uri=True, check_same_thread=False)
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
        return _document_from_row(row)

    def chunks(self, rows: list[int]) -> list[Chunk]:
        """Passages by row number (FAISS id), in the order asked."""
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

    def vectors(self, rows: list[int]) -> np.ndarray:
        """Stored vectors for rows (used by incremental builds to skip re-embedding)."""
        if self.dense is None or not rows:
            return np.zeros((0, self.manifest.dimension or 0), dtype=np.float32)
        if self.stored_vectors is not None:
            return np.asarray(self.stored_vectors[rows], dtype=np.float32)
        return np.vstack([self.dense.reconstruct(int(r)) for r in rows]).astype(np.float32)  # type: ignore[attr-defined]

    def dense_search(self, vector: np.ndarray, k: int, mask: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
        """Scores and rows of the k nearest passages, only among mask's rows when a mask is given."""
        import faiss

        _use_threads(_question_threads)
        params = None
        if mask is not None:
            selector = faiss.IDSelectorBatch(np.flatnonzero(mask).astype(np.int64))
            if isinstance(self.dense, faiss.IndexIVF):
                # every list: the chosen rows may all sit in lists the question is not near
                params = faiss.SearchParametersIVF(sel=selector, nprobe=self.dense.nlist)
            else:
                params = faiss.SearchParameters(sel=selector)
        return self.dense.search(vector, min(k, len(self)), params=params)  # type: ignore[union-attr]


# ---------------------------------------------------------------------------------------- open


def current_version(index_dir: Path) -> Path | None:
    pointer = index_dir / CURRENT
    try:
        name = pointer.read_text(encoding="utf-8").strip()
    except FileNotFoundError:
        return None
    folder = index_dir / name
    return folder if name and folder.is_dir() else None


# One index load at a time per process: numpy parses .npy headers with ast.literal_eval, which
# raises SystemError when two threads parse at once on CPython 3.11 ("AST constructor recursion
# depth mismatch"); a server reloading while a build in the same process opens the new version hit it.
_LOAD_LOCK = threading.Lock()


def open_index(index_dir: Path, verify: bool = True) -> Index:
    """Open the live index version; damaged or missing files are a clear error."""
    with _LOAD_LOCK:
        return _open_index(index_dir, verify)


def _open_index(index_dir: Path, verify: bool) -> Index:
    folder = current_version(index_dir)
    if folder is None:
        raise IndexMissing(f"no index in {index_dir}: build it with `threatqa index --index {index_dir}`")
    manifest = read_manifest(folder)
    if verify:
        check_files(folder, manifest)
    lexical = LexicalIndex(folder / BM25_DIR)
    dense = stored = None
    if "dense" in manifest.retrievers:
        import faiss

        try:
            # memory-mapped: pages load on demand and are shared by every process serving the index
            dense = faiss.read_index(str(folder / DENSE), faiss.IO_FLAG_MMAP | faiss.IO_FLAG_READ_ONLY)
            if VECTORS in manifest.files:
                stored = np.load(folder / VECTORS, mmap_mode="r")
        except (RuntimeError, ValueError) as exc:
            raise IndexMismatch(f"{folder / DENSE} is unreadable ({exc}); rebuild with `threatqa index`") from None
        if dense.ntotal != manifest.chunk_count or dense.d != manifest.dimension:
            raise IndexMismatch(
                f"{folder / DENSE} holds {dense.ntotal} vectors of dimension {dense.d}, the manifest says "
                f"{manifest.chunk_count} of {manifest.dimension}; rebuild with `threatqa index`"
            )
    return Index(folder, manifest, lexical, dense, stored)


def read_manifest(folder: Path) -> Manifest:
    try:
        data = json.loads((folder / MANIFEST).read_text(encoding="utf-8"))
        manifest = Manifest.from_json(data)
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise IndexMismatch(
            f"index manifest {folder / MANIFEST} is unreadable ({exc}); rebuild with `threatqa index`"
        ) from None
    if manifest.schema_version != SCHEMA_VERSION:
        raise IndexMismatch(
            f"index schema {manifest.schema_version} is not the supported {SCHEMA_VERSION}; "
            "rebuild with `threatqa index`"
        )
    return manifest


def check_files(folder: Path, manifest: Manifest) -> None:
    """Every file the manifest lists exists with its size (and checksum, for small indexes)."""
    total = sum(int(info["bytes"]) for info in manifest.files.values())  # type: ignore[call-overload]
    for name, info in manifest.files.items():
        path = folder / name
        if not path.is_file() or path.stat().st_size != info["bytes"]:
            raise IndexMismatch(f"index file {path} is missing or truncated; rebuild with `threatqa index`")
        if total <= VERIFY_CHECKSUMS_BELOW and file_sha256(path) != info["sha256"]:
            raise IndexMismatch(f"index file {path} does not match its checksum; rebuild with `threatqa index`")


def check_model(manifest: Manifest, model: str, dimension: int | None = None) -> None:
    """A dense index must be queried with the model that built it."""
    if "dense" not in manifest.retrievers or not model:
        return
    if manifest.model != model:
        raise IndexMismatch(
            f"the index was built with model {manifest.model!r} but the configured model is {model!r}; "
            f"rebuild with `threatqa index` or set THREATQA_MODEL={manifest.model}"
        )
    if dimension is not None and dimension != manifest.dimension:
        raise IndexMismatch(
            f"model {model!r} gives {dimension}-d vectors but the index holds {manifest.dimension}-d ones; "
            "rebuild with `threatqa index`"
        )


# --------------------------------------------------------------------------------------- build


# FAISS threads per question (0: OpenMP's default). An OpenMP thread count belongs to the thread
# that sets it, and questions are searched on whichever thread the server gives them, so each
# search applies it (Index.dense_search); without that, every thread but the one that set it ran
# FAISS on all cores.
_question_threads = 0


def set_compute_threads(threads: int) -> None:
    """CPU threads FAISS (OpenMP) and PyTorch, when loaded, use for a question, process-wide.

    A server answers `workers` questions at once: PyTorch, FAISS (and ONNX Runtime, whose query
    session is made with its own count) do best with one thread each on a 2-core machine at two
    questions at once (benchmarks/threads.py). PyTorch and FAISS share one OpenMP runtime, which
    PyTorch sets to its count in each thread it runs on, hence one count for the two."""
    global _question_threads
    if (torch := sys.modules.get("torch")) is not None:
        torch.set_num_threads(threads)
    _question_threads = threads
    _use_threads(threads)


def _use_threads(threads: int) -> None:
    """FAISS on this thread uses `threads` threads (0: leave it as it is)."""
    import faiss

    if threads and faiss.omp_get_max_threads() != threads:
        faiss.omp_set_num_threads(threads)


@contextlib.contextmanager
def compute_threads(threads: int) -> Iterator[None]:
    """The block runs with `threads` compute threads (an index build uses every core); restored after.
    FAISS's count is this thread's, so questions answered meanwhile on other threads keep theirs."""
    import faiss

    torch = sys.modules.get("torch")
    before = faiss.omp_get_max_threads(), torch.get_num_threads() if torch is not None else None
    if torch is not None:
        torch.set_num_threads(threads)
    _use_threads(threads)
    try:
        yield
    finally:
        if torch is not None:
            torch.set_num_threads(before[1])
        _use_threads(before[0])


def build_index(
    docs_dir: Path,
    index_dir: Path,
    embedder: Embedder | None,
    chunking: ChunkConfig = ChunkConfig(),
    max_file_mb: float = 50.0,
    progress: bool = False,
    warn: Callable[[str], None] = print,
    dense: DenseConfig = DenseConfig(),
) -> BuildReport:
    """Index docs_dir into index_dir, re-embedding only added or changed documents."""
    warnings: list[str] = []

    def note(message: str) -> None:
        warnings.append(message)
        warn(message)

    documents = load_documents(docs_dir, max_file_mb, warn=note)
    index_dir.mkdir(parents=True, exist_ok=True)
    with _build_lock(index_dir), compute_threads(os.cpu_count() or 1):
        previous = _previous(index_dir, note)
        fingerprint = input_fingerprint(docs_dir, chunking)
        model = embedder.name if embedder else None
        if previous is not None and previous.manifest.inputs == fingerprint and previous.manifest.model == model:
            return _unchanged_report(previous, warnings)
        if previous is not None and previous.has_dense and embedder is None:
            note("warning: no embedding model available; the new index version is lexical only")
        chunks = chunk_documents(documents, chunking)
        reusable = previous if previous and _compatible(previous.manifest, chunking, embedder) else None
        vectors, embedded, reused = _vectors(chunks, documents, reusable, embedder, progress)
        version = f"v-{time.strftime('%Y%m%dT%H%M%S', time.gmtime())}-{fingerprint[:8]}"
        manifest = _write_version(
            index_dir, version, documents, chunks, vectors, embedder, chunking, fingerprint, dense
        )
        _switch(index_dir, version)
        _prune(index_dir, keep={version, previous.folder.name if previous else ""})
    old = {p: info["sha256"] for p, info in (previous.manifest.documents.items() if previous else [])}
    new = {d.path: d.sha256 for d in documents}
    return BuildReport(
        version=manifest.id,
        changed=True,
        documents=len(documents),
        passages=len(chunks),
        added=tuple(sorted(set(new) - set(old))),
        updated=tuple(sorted(p for p in new if p in old and old[p] != new[p])),
        removed=tuple(sorted(set(old) - set(new))),
        embedded=embedded,
        reused=reused,
        mode="hybrid" if embedder else "lexical",
        warnings=tuple(warnings),
    )


def is_stale(docs_dir: Path, index_dir: Path, model: str | None, chunking: ChunkConfig = ChunkConfig()) -> bool:
    """True when the docs folder or the chunk settings no longer match the live index, or a model
    is available that the index was not built with. `model=None` (no model available) never asks
    for a rebuild by itself: a dense index is then queried lexically rather than thrown away."""
    folder = current_version(index_dir)
    if folder is None:
        return True
    try:
        manifest = read_manifest(folder)
    except IndexMismatch:
        return True
    if model is not None and manifest.model != model:
        return True
    return manifest.inputs != input_fingerprint(docs_dir, chunking)


def input_fingerprint(docs_dir: Path, chunking: ChunkConfig) -> str:
    """Hash of every candidate file (path and bytes, skipped ones included) and the chunk settings."""
    digest = hashlib.sha256(json.dumps([SCHEMA_VERSION, asdict(chunking)], sort_keys=True).encode())
    if docs_dir.is_dir():
        for path in iter_files(docs_dir):
            digest.update(f"{path.relative_to(docs_dir).as_posix()}\0{file_sha256(path)}\n".encode())
    return digest.hexdigest()


def _previous(index_dir: Path, warn: Callable[[str], None]) -> Index | None:
    try:
        return open_index(index_dir)
    except IndexMissing:
        return None
    except IndexMismatch as exc:
        warn(f"warning: previous index not reused ({exc}); building from scratch")
        return None


def _compatible(manifest: Manifest, chunking: ChunkConfig, embedder: Embedder | None) -> bool:
    return (
        manifest.chunking == asdict(chunking)
        and embedder is not None
        and "dense" in manifest.retrievers
        and manifest.model == embedder.name
        and manifest.dimension == embedder.dimension
    )


def _unchanged_report(previous: Index, warnings: list[str]) -> BuildReport:
    manifest = previous.manifest
    return BuildReport(
        version=manifest.id,
        changed=False,
        documents=len(manifest.documents),
        passages=manifest.chunk_count,
        reused=manifest.chunk_count,
        mode="hybrid" if "dense" in manifest.retrievers else "lexical",
        warnings=tuple(warnings),
    )


def _vectors(
    chunks: list[Chunk],
    documents: list[Document],
    previous: Index | None,
    embedder: Embedder | None,
    progress: bool,
) -> tuple[np.ndarray | None, int, int]:
    """Vectors for every chunk: reused from the previous index for unchanged documents."""
    if embedder is None:
        return None, 0, 0
    vectors = np.zeros((len(chunks), embedder.dimension), dtype=np.float32)
    todo: list[int] = []
    old_docs = previous.manifest.documents if previous else {}
    by_doc: dict[str, list[int]] = {}
    for i, chunk in enumerate(chunks):
        by_doc.setdefault(chunk.doc_id, []).append(i)
    for document in documents:
        positions = by_doc.get(document.id, [])
        old = old_docs.get(document.path)
        if previous is not None and old and old["sha256"] == document.sha256 and old["chunks"] == len(positions):
            vectors[positions] = previous.vectors(
                list(range(int(old["first_row"]), int(old["first_row"]) + len(positions)))
            )  # type: ignore[call-overload]
        else:
            todo.extend(positions)
    if todo:
        vectors[todo] = embedder.encode_documents([chunks[i].text for i in todo], progress=progress)
    return vectors, len(todo), len(chunks) - len(todo)


def _write_version(
    index_dir: Path,
    version: str,
    documents: list[Document],
    chunks: list[Chunk],
    vectors: np.ndarray | None,
    embedder: Embedder | None,
    chunking: ChunkConfig,
    fingerprint: str,
    dense_config: DenseConfig = DenseConfig(),
) -> Manifest:
    staging = index_dir / f".tmp-{uuid.uuid4().hex}"
    staging.mkdir()
    try:
        _write_store(staging / CHUNKS, documents, chunks)
        LexicalIndex.build([c.text for c in chunks], staging / BM25_DIR)
        retrievers = ["bm25"]
        if vectors is not None and embedder is not None:
            import faiss

            dense = build_dense(vectors, dense_config)
            faiss.write_index(dense, str(staging / DENSE))
            if not isinstance(dense, faiss.IndexFlat):
                np.save(staging / VECTORS, vectors.astype(np.float16))
            retrievers.append("dense")
        files = {
            str(path.relative_to(staging)): {"bytes": path.stat().st_size, "sha256": file_sha256(path)}
            for path in sorted(staging.rglob("*"))
            if path.is_file()
        }
        first_rows: dict[str, int] = {}
        counts: dict[str, int] = {}
        for row, chunk in enumerate(chunks):
            first_rows.setdefault(chunk.doc_id, row)
            counts[chunk.doc_id] = counts.get(chunk.doc_id, 0) + 1
        manifest = Manifest(
            id=version,
            schema_version=SCHEMA_VERSION,
            created=time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            model=embedder.name if embedder and vectors is not None else None,
            dimension=embedder.dimension if embedder and vectors is not None else None,
            retrievers=tuple(retrievers),
            chunking=asdict(chunking),
            documents={
                d.path: {
                    "id": d.id,
                    "sha256": d.sha256,
                    "chunks": counts.get(d.id, 0),
                    "first_row": first_rows.get(d.id, 0),
                }
                for d in documents
            },
            chunk_count=len(chunks),
            files=files,
            inputs=fingerprint,
        )
        _write_atomic(staging / MANIFEST, json.dumps(manifest.to_json(), indent=1, sort_keys=True))
        _fsync_tree(staging)
        os.replace(staging, index_dir / version)
        return manifest
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise


def build_dense(vectors: np.ndarray, config: DenseConfig = DenseConfig()) -> object:
    """A FAISS inner-product index (== cosine on normalised vectors): exact while small, IVF-SQ8 above.

    IVF with 8-bit scalar quantisation measured better than HNSW here (benchmarks/ann.py, 1M
    clustered 384-d vectors): similar recall@10 at a few ms, a quarter of the memory, a faster build."""
    import faiss

    n, dim = vectors.shape
    if n <= config.ann_threshold:
        index = faiss.IndexFlatIP(dim)
        index.add(vectors)
        return index
    nlist = ann_lists(n)
    index = faiss.IndexIVFScalarQuantizer(
        faiss.IndexFlatIP(dim), dim, nlist, faiss.ScalarQuantizer.QT_8bit, faiss.METRIC_INNER_PRODUCT
    )
    # k-means on a sample: 64 points a list is plenty, and bounds the training time at any size
    sample = np.random.default_rng(0).choice(n, min(n, 64 * nlist), replace=False)
    index.cp.niter = 10
    index.train(vectors[np.sort(sample)])
    index.add(vectors)
    index.nprobe = min(config.nprobe, nlist)
    return index


def ann_lists(n: int) -> int:
    """IVF lists for n vectors: about 4 * sqrt(n), a power of two up to 4096 (fewer for a tiny
    corpus: k-means wants about 40 points a list)."""
    return int(max(1, min(4096, 2 ** round(np.log2(4 * np.sqrt(n))), n // 40)))


def _write_store(path: Path, documents: list[Document], chunks: list[Chunk]) -> None:
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
                (
                    d.id,
                    d.path,
                    d.title,
                    d.sha256,
                    d.date,
                    d.body_start,
                    json.dumps([list(p.__dict__.values()) for p in d.pages]),
                    d.text,
                )
                for d in documents
            ],
        )
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


def passage_sha256(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def _switch(index_dir: Path, version: str) -> None:
    """Point CURRENT at the new version: os.replace is atomic, so readers see old or new."""
    _write_atomic(index_dir / CURRENT, version + "\n")
    _fsync_dir(index_dir)


def _prune(index_dir: Path, keep: set[str]) -> None:
    for path in index_dir.iterdir():
        if path.is_dir() and (path.name.startswith(".tmp-") or path.name.startswith("v-")) and path.name not in keep:
            shutil.rmtree(path, ignore_errors=True)


@contextlib.contextmanager
def _build_lock(index_dir: Path) -> Iterator[None]:
    """One build at a time per index folder (a second waits for the first)."""
    with open(index_dir / ".lock", "w") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def _write_atomic(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex}.tmp")
    with open(tmp, "w", encoding="utf-8") as handle:
        handle.write(text)
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(tmp, path)


def _fsync_tree(folder: Path) -> None:
    for path in folder.rglob("*"):
        if path.is_file():
            with open(path, "rb") as handle:
                os.fsync(handle.fileno())
    for path in [folder, *[p for p in folder.rglob("*") if p.is_dir()]]:
        _fsync_dir(path)


def _fsync_dir(folder: Path) -> None:
    fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _document_from_row(row: sqlite3.Row) -> Document:
    pages = tuple(PageSpan(*p) for p in json.loads(row["pages"]))
    return Document(
        id=row["id"], path=row["path"], title=row["title"], sha256=row["sha256"], date=row["date"],
        text=row["text"], body_start=row["body_start"], pages=pages,
    )  # fmt: skip
