"""Opening index versions (the read side of the index stage): the live one, checked, or the newest
earlier one that is whole when the live one is damaged.

A version is checked when it opens: every file the manifest lists must have its size, and small
files (and every file of an index under `VERIFY_CHECKSUMS_BELOW`) their sha256. The remaining
checksums of a large index are computed in a background thread (`Index.damage` says what it found),
while every text served is checked as it is read (store.py), so that no altered text is ever quoted.
"""

from __future__ import annotations

import os
import threading
from pathlib import Path

import numpy as np

from threatqa import arrays
from threatqa.chunking import Chunk
from threatqa.dense import DenseIndex
from threatqa.errors import IndexMismatch, IndexMissing
from threatqa.ingest import Document, file_sha256
from threatqa.lexical import LexicalIndex
from threatqa.manifest import MANIFEST, Manifest, read_manifest
from threatqa.store import CHUNKS, DIGESTS, ChunkStore, DocumentInfo

CURRENT = "CURRENT"
BM25_DIR = "bm25"
VERIFY_CHECKSUMS_BELOW = 256 * 1024 * 1024  # bytes: a whole index this small is checksummed before it opens
VERIFY_FILES_BELOW = 16 * 1024 * 1024  # bytes: files this small are always checksummed before it opens


class Index:
    """One opened, immutable index version: chunk store, BM25 and (optionally) the window vectors."""

    def __init__(
        self, folder: Path, manifest: Manifest, store: ChunkStore, lexical: LexicalIndex, dense: DenseIndex | None
    ) -> None:
        self.folder = folder
        self.manifest = manifest
        self.store = store
        self.lexical = lexical
        self.dense = dense
        self.damage: str | None = None  # set when a checksum computed after opening does not match
        self.fallback_notice: str | None = None  # set when this version was opened in place of a damaged one
        self._checking: threading.Thread | None = None

    @property
    def version(self) -> str:
        return self.manifest.id

    @property
    def has_dense(self) -> bool:
        return self.dense is not None

    def __len__(self) -> int:
        return self.manifest.chunk_count

    def documents(self) -> list[DocumentInfo]:
        return self.store.documents()

    def document(self, doc_id: str) -> Document:
        return self.store.document(doc_id)

    def chunks(self, rows: list[int]) -> list[Chunk]:
        """Passages by row number, in the order asked."""
        return self.store.chunks(rows)

    def rows_for_documents(self, doc_ids_or_paths: list[str]) -> np.ndarray:
        return self.store.rows_for_documents(doc_ids_or_paths)

    def close(self) -> None:
        """Release what can be released now (the chunk store's file); memory maps go with the object."""
        self.store.close()

    def check_in_background(self, names: list[str]) -> None:
        """Checksum `names` in a daemon thread; a mismatch sets `damage` (the engine then switches away)."""

        def check() -> None:
            for name in names:
                if self.damage is None and file_sha256(self.folder / name) != self.manifest.files[name]["sha256"]:
                    self.damage = f"index file {name} of {self.version} does not match its checksum"

        self._checking = threading.Thread(target=check, name=f"checksum-{self.version}", daemon=True)
        self._checking.start()

    def wait_checked(self, timeout: float | None = None) -> str | None:
        """Wait for the background checksums (if any); returns `damage`."""
        if self._checking is not None:
            self._checking.join(timeout)
        return self.damage


def current_version(index_dir: Path) -> Path | None:
    pointer = index_dir / CURRENT
    try:
        name = pointer.read_text(encoding="utf-8").strip()
    except FileNotFoundError:
        return None
    folder = index_dir / name
    return folder if name and folder.is_dir() else None


class LiveVersion:
    """`current_version(index_dir)`, read again only when the CURRENT file has changed: a server asks
    before every question, and a stat takes a tenth of reading the file and checking its folder (36 us).
    CURRENT is replaced whole (os.replace), so a new version is a new file; the file's device, inode,
    size and modification time are compared, so a rewrite in place is seen too."""

    def __init__(self, index_dir: Path) -> None:
        self.index_dir = index_dir
        self._last: tuple[tuple[int, ...], Path | None] | None = None

    def __call__(self) -> Path | None:
        try:
            stat = os.stat(self.index_dir / CURRENT)
            key: tuple[int, ...] | None = (stat.st_dev, stat.st_ino, stat.st_size, stat.st_mtime_ns)
        except OSError:
            key = None
        last = self._last  # one read: another thread may replace it meanwhile
        if key is not None and last is not None and last[0] == key:
            return last[1]
        folder = current_version(self.index_dir)  # stat first: a change meanwhile is read again next time
        if key is not None:
            self._last = (key, folder)
        return folder


def versions(index_dir: Path) -> list[Path]:
    """Every complete version folder (its manifest is written last), newest first (names start with the
    build's time, to the microsecond)."""
    if not index_dir.is_dir():
        return []
    found = [p for p in index_dir.iterdir() if p.name.startswith("v-") and (p / MANIFEST).is_file()]
    return sorted(found, key=lambda p: p.name, reverse=True)


# One index load at a time per process: numpy parses .npy headers with ast.literal_eval, which
# raises SystemError when two threads parse at once on CPython 3.11 ("AST constructor recursion
# depth mismatch"); a server reloading while a build in the same process opens the new version hit it.
_LOAD_LOCK = threading.Lock()


def open_index(
    index_dir: Path, verify: bool = True, fallback: bool = True, damaged: dict[str, str] | None = None
) -> Index:
    """Open the live index version. When it is damaged and `fallback`, the newest earlier version
    that is whole opens instead, with `fallback_notice` saying so; damage is a clear error otherwise.
    `damaged` names versions already found damaged (name -> what was found), which are not opened."""
    damaged = damaged or {}
    live = current_version(index_dir)
    if live is None:
        raise IndexMissing(f"no index in {index_dir}: build it with `threatqa index --index {index_dir}`")
    try:
        if live.name in damaged:
            raise IndexMismatch(damaged[live.name])
        return open_version(live, verify)
    except IndexMismatch as exc:
        if not fallback:
            raise
        problem = exc
    for folder in versions(index_dir):
        if folder == live or folder.name in damaged:
            continue
        try:
            index = open_version(folder, verify)
        except IndexMismatch:
            continue
        index.fallback_notice = (
            f"the live index version {live.name} is damaged ({problem}); answering from the previous version "
            f"{folder.name}: run `threatqa index` to rebuild"
        )
        return index
    raise problem


def open_version(folder: Path, verify: bool = True) -> Index:
    """Open one version folder; damaged or missing files are an IndexMismatch."""
    with _LOAD_LOCK:
        manifest = read_manifest(folder)
        later = check_files(folder, manifest) if verify else []
        dense = None
        if manifest.has_dense:
            dense = DenseIndex.open(folder, manifest.chunk_count, int(manifest.dimension or 0))
        try:  # damage in a large index's files is found here when their checksums are still being made
            digests = arrays.load(folder / DIGESTS) if arrays.stored(folder / DIGESTS).name in manifest.files else None
            lexical = LexicalIndex(folder / BM25_DIR)
        except ValueError as exc:
            raise IndexMismatch(f"index {folder} is unreadable ({exc}); rebuild with `threatqa index`") from None
        if digests is not None and len(digests) != manifest.chunk_count:
            raise IndexMismatch(f"{folder / DIGESTS} has {len(digests)} rows for {manifest.chunk_count} passages")
        texts = {str(info["id"]): str(info["text_sha256"]) for info in manifest.documents.values()}
        store = ChunkStore(folder / CHUNKS, digests, texts)
        index = Index(folder, manifest, store, lexical, dense)
    if later:
        index.check_in_background(later)
    return index


def check_files(folder: Path, manifest: Manifest) -> list[str]:
    """Every file the manifest lists exists with its size; checksums are verified now for a small
    index and for small files, and returned (names to check later) for the large files of a large one."""
    total = sum(int(info["bytes"]) for info in manifest.files.values())  # type: ignore[call-overload]
    later = []
    for name, info in sorted(manifest.files.items()):
        path = folder / name
        if not path.is_file() or path.stat().st_size != info["bytes"]:
            raise IndexMismatch(f"index file {path} is missing or truncated; rebuild with `threatqa index`")
        if total > VERIFY_CHECKSUMS_BELOW and int(info["bytes"]) > VERIFY_FILES_BELOW:  # type: ignore[call-overload]
            later.append(name)
        elif file_sha256(path) != info["sha256"]:
            raise IndexMismatch(f"index file {path} does not match its checksum; rebuild with `threatqa index`")
    return later
