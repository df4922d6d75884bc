"""Stage 4: passages (+ window vectors) -> the index folder, written atomically and incrementally.

Layout of the index folder:

    CURRENT            name of the live version folder (replaced atomically)
    v-<id>/            one complete, immutable version
        manifest.json  schema, model (by content), retrievers, documents, checksums (written last; manifest.py)
        chunks.sqlite, chunks.blocks  documents and passages; the documents' text, compressed (store.py)
        dense.*, window*.npy, terms.*   window vectors (as codes), absent in lexical mode (dense.py)
        bm25/          the lexical views (lexical.py)

A build writes a new version beside the live one and only then switches CURRENT, so a build
killed at any point leaves the previous version loadable. The previous version is kept, so a
server that opened it keeps working while the next build lands.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import shutil
import sys
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from threatqa import arrays
from threatqa.chunking import Chunk, ChunkConfig, Span, chunk_documents, windows
from threatqa.dense import Carried, DenseConfig, TermVectors, compute_threads, write_dense
from threatqa.embeddings import Embedder
from threatqa.errors import IndexMismatch, IndexMissing, ModelUnavailable
from threatqa.ingest import Document, IngestLimits, file_sha256, load_documents
from threatqa.lexical import LexicalIndex, content_words
from threatqa.manifest import MANIFEST, SCHEMA_VERSION, Manifest, input_fingerprint, read_manifest
from threatqa.policy import Policy
from threatqa.store import CHUNKS, DIGESTS, DocumentInfo, passage_digests, passage_sha256, text_blocks, write_store
from threatqa.versions import BM25_DIR, CURRENT, Index, current_version, open_index

EMBED_SLICE = 512  # windows embedded per call, between progress reports
PROGRESS_EVERY = 10.0  # seconds between progress lines when stderr is not a terminal

__all__ = [
    "SCHEMA_VERSION", "BuildReport", "DenseConfig", "DocumentInfo", "Index", "build_index", "current_version",
    "is_stale", "open_index",
]  # fmt: skip


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
    embedded: int = 0  # windows embedded in this build
    reused: int = 0  # windows whose vectors came from the previous version
    mode: str = "lexical"
    warnings: tuple[str, ...] = field(default=())
    seconds: float = 0.0


# --------------------------------------------------------------------------------------- build


def build_index(
    docs_dir: Path,
    index_dir: Path,
    embedder: Embedder | None,
    chunking: ChunkConfig = ChunkConfig(),
    max_file_mb: float = 50.0,
    warn: Callable[[str], None] = print,
    dense: DenseConfig = DenseConfig(),
    allow_lexical: bool = False,
    limits: IngestLimits | None = None,
    policy: Policy | None = None,
) -> BuildReport:
    """Index docs_dir into index_dir, re-embedding only added or changed documents; the manifest
    records `policy` (the need-to-know policy in force) and each document's label under it.

    Without an embedder, a hybrid index is not replaced by a lexical one unless `allow_lexical`
    (the user chose lexical mode): that raises ModelUnavailable instead."""
    began = time.perf_counter()
    warnings: list[str] = []

    def note(message: str) -> None:
        warnings.append(message)
        warn(message)

    limits = limits or IngestLimits.from_environment(max_file_mb)
    documents = load_documents(docs_dir, max_file_mb, warn=note, limits=limits)
    # the fingerprint of the bytes actually read: a file saved or removed during the build then
    # differs from it, and the next run rebuilds
    read = {d.path: d.sha256 for d in documents}
    fingerprint = input_fingerprint(docs_dir, chunking, read, limits)
    index_dir.mkdir(parents=True, exist_ok=True)
    with _build_lock(index_dir), compute_threads(os.cpu_count() or 1):
        _prune(index_dir, keep=set(), staging_only=True)  # what killed builds left behind
        previous = _previous(index_dir, note)
        if previous is not None and previous.manifest.inputs == fingerprint and previous.manifest.built_with(embedder):
            return _unchanged_report(previous, warnings)
        if previous is not None and previous.has_dense and embedder is None and not allow_lexical:
            raise ModelUnavailable(
                f"no embedding model is available and index {previous.version} has dense vectors: not replacing it "
                "with a lexical-only index. Make the model available, or choose lexical mode (`threatqa index "
                "--lexical`, or THREATQA_MODEL= empty)"
            )
        chunks = chunk_documents(documents, chunking)
        reusable = previous if previous and previous.manifest.chunking == asdict(chunking) else None
        # the store's text blocks are compressed on a thread of their own while the passages are embedded and
        # the lexical index is built (Brotli lets other threads run): at about 0.6 MB/s, done after them, they
        # took 4-9% of a build of 1,000 passages with the real model (benchmarks/embed.py)
        pool, stop = ThreadPoolExecutor(1, thread_name_prefix="threatqa-blocks"), threading.Event()
        try:
            blocks = pool.submit(text_blocks, documents, previous.store if previous else None, stop)
            vectors, spans, carried, embedded, reused = _vectors(
                chunks, documents, reusable, embedder, chunking.window, warn
            )
            terms = _terms(chunks, previous, embedder, warn)
            now = time.time()
            version = f"v-{time.strftime('%Y%m%dT%H%M%S', time.gmtime(now))}{int(now % 1 * 1e6):06d}-{fingerprint[:8]}"
            carry = Carried(reusable.dense, carried) if reused and reusable and reusable.dense else None
            manifest = _write_version(
                index_dir, version, documents, chunks, vectors, spans, embedder, chunking, fingerprint, dense, terms,
                carry, _policy_record(policy, documents), blocks,
            )  # fmt: skip
        finally:  # a failed or interrupted build does not wait for the blocks
            stop.set()
            pool.shutdown(wait=False)
        _switch(index_dir, version)
        _prune(index_dir, keep={version, previous.folder.name if previous else ""})
    if input_fingerprint(docs_dir, chunking, limits=limits) != fingerprint:
        note(
            "warning: documents changed while they were being indexed; this version has them as they were "
            "read, and the next `threatqa index` (or server start) picks up the changes"
        )
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
        seconds=time.perf_counter() - began,
    )


def is_stale(
    docs_dir: Path,
    index_dir: Path,
    model: Embedder | None,
    chunking: ChunkConfig = ChunkConfig(),
    limits: IngestLimits | None = None,
) -> bool:
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
    if model is not None and not manifest.built_with(model):
        return True
    return manifest.inputs != input_fingerprint(docs_dir, chunking, limits=limits)


def _previous(index_dir: Path, warn: Callable[[str], None]) -> Index | None:
    try:
        index = open_index(index_dir)
    except IndexMissing:
        return None
    except IndexMismatch as exc:
        warn(f"warning: previous index not reused ({exc}); building from scratch")
        return None
    if index.fallback_notice or index.wait_checked():  # never reuse vectors from a damaged version
        warn(f"warning: previous index not reused ({index.fallback_notice or index.damage}); building from scratch")
        return None
    return index


def _unchanged_report(previous: Index, warnings: list[str]) -> BuildReport:
    manifest = previous.manifest
    return BuildReport(
        version=manifest.id,
        changed=False,
        documents=len(manifest.documents),
        passages=manifest.chunk_count,
        reused=manifest.window_count,
        mode="hybrid" if manifest.has_dense else "lexical",
        warnings=tuple(warnings),
    )


def _vectors(
    chunks: list[Chunk],
    documents: list[Document],
    previous: Index | None,
    embedder: Embedder | None,
    window: int,
    log: Callable[[str], None],
) -> tuple[np.ndarray | None, np.ndarray | None, np.ndarray | None, int, int]:
    """Window spans (passage row, start, end), their vectors, and each window's number in the previous
    version or -1: vectors of unchanged documents are reused from the previous version when it was
    built with the same model."""
    if embedder is None:
        return None, None, None, 0, 0
    rows_of: dict[str, list[int]] = {}
    for row, chunk in enumerate(chunks):
        rows_of.setdefault(chunk.doc_id, []).append(row)
    spans: list[tuple[int, int, int]] = []
    reuse: dict[int, np.ndarray] = {}  # first window number -> previous window numbers of an unchanged document
    old_docs = previous.manifest.documents if previous is not None else {}
    same_model = previous is not None and previous.dense is not None and previous.manifest.built_with(embedder)
    for document in documents:
        rows = rows_of.get(document.id, [])
        parts = windows(document.text, [Span(chunks[r].start, chunks[r].end) for r in rows], window, embedder.fits)
        first = len(spans)
        spans.extend((row, s.start, s.end) for row, part in zip(rows, parts) for s in part)
        old = old_docs.get(document.path)
        if same_model and old and old["sha256"] == document.sha256 and old["chunks"] == len(rows):
            old_rows = range(int(old["first_row"]), int(old["first_row"]) + len(rows))  # type: ignore[call-overload]
            ids = previous.dense.window_ids(list(old_rows))  # type: ignore[union-attr]
            if len(ids) == len(spans) - first:
                reuse[first] = ids
    table = np.array(spans, dtype=np.int64).reshape(-1, 3)
    vectors = np.zeros((len(table), embedder.dimension), dtype=np.float32)
    carried = np.full(len(table), -1, dtype=np.int64)
    for first, ids in reuse.items():
        vectors[first : first + len(ids)] = previous.dense.vectors(ids)  # type: ignore[union-attr]
        carried[first : first + len(ids)] = ids
    todo = np.flatnonzero(carried < 0)
    doc_text = {d.id: d.text for d in documents}
    window_texts = [doc_text[chunks[int(table[i, 0])].doc_id][table[i, 1] : table[i, 2]] for i in todo]
    vectors[todo] = _embed(embedder, window_texts, log)
    return vectors, table, carried, len(todo), int((carried >= 0).sum())


def _terms(
    chunks: list[Chunk], previous: Index | None, embedder: Embedder | None, log: Callable[[str], None]
) -> TermVectors | None:
    """The corpus's content words with their vectors; words the previous version (same model) had
    keep theirs."""
    if embedder is None:
        return None
    words = sorted({word for chunk in chunks for word in content_words(chunk.text)})
    vectors = np.zeros((len(words), embedder.dimension), dtype=np.float32)
    same_model = previous is not None and previous.dense is not None and previous.manifest.built_with(embedder)
    old = previous.dense.terms if same_model else None  # type: ignore[union-attr]
    known = old.position if old is not None else {}
    kept = [i for i, word in enumerate(words) if word in known]
    todo = [i for i, word in enumerate(words) if word not in known]
    if old is not None and kept:
        vectors[kept] = old.of([words[i] for i in kept])
    vectors[todo] = _embed(embedder, [words[i] for i in todo], log, unit="words", batch_size=256)
    return TermVectors(words, vectors)


def _embed(
    embedder: Embedder, texts: list[str], log: Callable[[str], None], unit: str = "windows", batch_size: int = 32
) -> np.ndarray:
    """Vectors of texts, a slice at a time: a progress bar on a terminal, else a line every few seconds."""
    out = np.zeros((len(texts), embedder.dimension), dtype=np.float32)
    if not texts:
        return out
    from tqdm.auto import tqdm

    bar = tqdm(total=len(texts), desc=f"Embedding {unit}", unit=unit[:-1]) if sys.stderr.isatty() else None
    began = last = time.perf_counter()
    # longest first over all the texts, not within each slice: a batch then holds texts of one length
    # and pads little, as one call over everything would (the embedders sort only within a call)
    order = np.argsort([-len(t) for t in texts], kind="stable")
    for start in range(0, len(texts), EMBED_SLICE):
        rows = order[start : start + EMBED_SLICE]
        out[rows] = embedder.encode_documents([texts[i] for i in rows], batch_size=batch_size)
        done, now = min(start + EMBED_SLICE, len(texts)), time.perf_counter()
        if bar is not None:
            bar.update(done - bar.n)
        elif now - last >= PROGRESS_EVERY or done == len(texts):
            log(f"embedded {done:,} of {len(texts):,} {unit} ({done / max(now - began, 1e-9):,.0f}/s)")
            last = now
    if bar is not None:
        bar.close()
    return out


def _policy_record(policy: Policy | None, documents: list[Document]) -> dict[str, object] | None:
    """What the manifest records of the policy in force at build time: its version and every label."""
    if policy is None:
        return None
    labels = {d.path: policy.label(d.path, d.text).name for d in documents}
    return {"version": policy.version, "labels": dict(sorted(labels.items()))}


def _write_version(
    index_dir: Path,
    version: str,
    documents: list[Document],
    chunks: list[Chunk],
    vectors: np.ndarray | None,
    spans: np.ndarray | None,
    embedder: Embedder | None,
    chunking: ChunkConfig,
    fingerprint: str,
    dense_config: DenseConfig = DenseConfig(),
    terms: TermVectors | None = None,
    carried: Carried | None = None,
    policy: dict[str, object] | None = None,
    blocks: Future[list[list[bytes]]] | None = None,
) -> Manifest:
    staging = index_dir / f".tmp-{uuid.uuid4().hex}"
    staging.mkdir()
    try:
        arrays.save(staging / DIGESTS, passage_digests([c.text for c in chunks]))
        LexicalIndex.build([c.text for c in chunks], staging / BM25_DIR)
        # the documents' text blocks (`blocks`: being made, texts the previous version holds carried over)
        write_store(staging / CHUNKS, documents, chunks, blocks=blocks.result() if blocks is not None else None)
        dense = vectors is not None and spans is not None and embedder is not None
        if dense:
            starts = np.array([c.start for c in chunks], dtype=np.int64)
            write_dense(staging, vectors, spans, starts, dense_config, carried)  # type: ignore[arg-type]
            if terms is not None:
                terms.save(staging)
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
        model = embedder if dense else None
        manifest = Manifest(
            id=version,
            schema_version=SCHEMA_VERSION,
            created=time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            model=model.name if model else None,
            model_fingerprint=model.fingerprint if model else None,
            backend=model.backend if model else None,
            precision=model.precision if model else None,
            dimension=model.dimension if model else None,
            retrievers=("bm25", "dense") if dense else ("bm25",),
            chunking=asdict(chunking),
            documents={
                d.path: {
                    "id": d.id,
                    "sha256": d.sha256,
                    "chunks": counts.get(d.id, 0),
                    "first_row": first_rows.get(d.id, 0),
                    "text_sha256": passage_sha256(d.text),
                }
                for d in documents
            },
            chunk_count=len(chunks),
            window_count=len(spans) if dense else 0,  # type: ignore[arg-type]
            files=files,
            inputs=fingerprint,
            policy=policy,
        )
        _write_atomic(staging / MANIFEST, json.dumps(manifest.to_json(), indent=1, sort_keys=True))
        _fsync_tree(staging)
        _read_only(staging)
        os.replace(staging, index_dir / version)
        return manifest
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise


def _switch(index_dir: Path, version: str) -> None:
    """Point CURRENT at the new version: os.replace is atomic, so readers see old or new."""
    _write_atomic(index_dir / CURRENT, version + "\n")
    _fsync_dir(index_dir)


def _prune(index_dir: Path, keep: set[str], staging_only: bool = False) -> None:
    """Remove versions not in `keep` and staging folders of builds that died (call under the build lock)."""
    prefixes = (".tmp-",) if staging_only else (".tmp-", "v-")
    for path in index_dir.iterdir():
        if path.is_dir() and path.name.startswith(prefixes) and path.name not in keep:
            _writable(path)
            shutil.rmtree(path, ignore_errors=True)


def _read_only(folder: Path) -> None:
    """A finished version cannot be changed in place by mistake (a truncated memory-mapped file would
    crash the server that maps it); the folders stay writable only for pruning."""
    for path in folder.rglob("*"):
        if path.is_file():
            path.chmod(0o444)


def _writable(folder: Path) -> None:
    for path in folder.rglob("*"):
        if path.is_file():
            with contextlib.suppress(OSError):
                path.chmod(0o644)


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
