"""Faults in the index and the docs folder (issue 13, items 1, 4, 6, 11, 12): a damaged or truncated
version is never quoted and the previous version answers; a rebuild that fails for any reason keeps
the server up; documents changed during a build are picked up next time; reloads release files."""

from __future__ import annotations

import os
import re
import sqlite3
import string
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import brotli
import pytest

from threatqa import arrays
from threatqa.config import Settings
from threatqa.engine import Engine, index_folder
from threatqa.errors import IndexMismatch
from threatqa.index import build_index, is_stale
from threatqa.store import TEXT_BLOCK, compress_block
from threatqa.versions import Index, current_version, open_index, versions

QUESTION = "What does wastewater analysis show about cocaine?"


def _quiet(message: str) -> None:
    pass


def _two_versions(settings: Settings) -> tuple[Path, Path]:
    """Build, change one document, build again: returns (previous, live) version folders."""
    build_index(settings.docs, settings.index, None, warn=_quiet)
    first = current_version(settings.index)
    (settings.docs / "extra.txt").write_text("Cocaine wastewater figures rose in every city.\n", encoding="utf-8")
    build_index(settings.docs, settings.index, None, warn=_quiet)
    live = current_version(settings.index)
    assert first is not None and live is not None and first != live
    return first, live


def _tamper_passage(folder: Path, row: int = 0) -> None:
    """Change one letter of a stored passage's text, as bit rot or an editor would (not through threatqa):
    the block is compressed again and written in its place (a letter it compresses no larger with), and the
    blocks table gets its size; no file changes size."""
    path, blocks = folder / "chunks.sqlite", folder / "chunks.blocks"
    path.chmod(0o644)
    blocks.chmod(0o644)
    conn = sqlite3.connect(path)
    doc, start = conn.execute("SELECT doc, start FROM chunks WHERE row = ?", (row,)).fetchone()
    key = (doc << 32) + start // TEXT_BLOCK
    offset, size = conn.execute("SELECT offset, size FROM blocks WHERE key = ?", (key,)).fetchone()
    data = blocks.read_bytes()
    text = brotli.decompress(data[offset : offset + size]).decode()
    first = start % TEXT_BLOCK + 3
    edits = ((at, letter) for at in range(first, first + 40) for letter in string.ascii_letters if letter != text[at])
    block = next(b for at, c in edits if len(b := compress_block(text[:at] + c + text[at + 1 :])) <= size)
    blocks.write_bytes(data[:offset] + block.ljust(size, b"\0") + data[offset + size :])
    conn.execute("UPDATE blocks SET size = ? WHERE key = ?", (len(block), key))
    conn.commit()
    conn.close()


def test_altered_passage_is_never_quoted_even_unchecked_at_load(settings: Settings, monkeypatch) -> None:
    previous, live = _two_versions(settings)
    _tamper_passage(live)
    index = open_index(settings.index, verify=False)  # as a large index opens: no checksum of the store yet
    with pytest.raises(IndexMismatch, match=r"passage 0 .* does not match its checksum"):
        index.chunks([0])
    monkeypatch.setattr("threatqa.versions.VERIFY_CHECKSUMS_BELOW", 0)  # as at scale: sizes only at start,
    monkeypatch.setattr("threatqa.versions.VERIFY_FILES_BELOW", 0)
    monkeypatch.setattr(Index, "check_in_background", lambda self, names: None)  # and checksums not done yet
    engine = Engine.start(settings, build="never", log=_quiet)
    assert engine.index.folder == live
    # a question that quotes the altered passage: the engine moves to the previous version and answers from it
    answer = engine.ask(QUESTION, k=100)
    assert engine.index.folder == previous
    assert {p.citation.index_version for p in answer.passages} == {previous.name}
    assert any("damaged" in notice for notice in answer.notices)


def test_start_on_a_damaged_live_version_falls_back_to_the_previous_one(settings: Settings) -> None:
    previous, live = _two_versions(settings)
    _tamper_passage(live)
    engine = Engine.start(settings, build="never", log=_quiet)
    assert engine.index.folder == previous
    assert any("is damaged" in n and previous.name in n for n in engine.status().notices)


def _arrays(folder: Path) -> list[Path]:
    """The files of saved arrays under `folder`, compressed (`.npy.br`) or not (arrays.py)."""
    return [p for p in folder.rglob("*") if ".npy" in p.suffixes]


def test_truncated_mapped_file_at_restart_falls_back(settings: Settings) -> None:
    previous, live = _two_versions(settings)
    mapped = max(_arrays(live / "bm25"), key=lambda p: p.stat().st_size)
    mapped.chmod(0o644)
    with open(mapped, "r+b") as handle:
        handle.truncate(mapped.stat().st_size // 2)
    index = open_index(settings.index)
    assert index.folder == previous and "missing or truncated" in (index.fallback_notice or "")


def test_large_index_checks_checksums_in_the_background(settings: Settings, monkeypatch) -> None:
    monkeypatch.setattr("threatqa.versions.VERIFY_CHECKSUMS_BELOW", 0)
    monkeypatch.setattr("threatqa.versions.VERIFY_FILES_BELOW", 0)
    monkeypatch.setattr("threatqa.arrays.PACK_BELOW", 0)  # a large index's arrays: plain files, read as they are
    build_index(settings.docs, settings.index, None, warn=_quiet)
    live = current_version(settings.index)
    assert open_index(settings.index).wait_checked(30) is None
    target = max(_arrays(live / "bm25"), key=lambda p: p.stat().st_size)
    target.chmod(0o644)
    data = bytearray(target.read_bytes())
    data[-1] ^= 0xFF  # same size, one byte other
    target.write_bytes(bytes(data))
    index = open_index(settings.index, fallback=False)
    assert index.folder == live  # opened at once: only sizes were checked before
    assert target.name in (index.wait_checked(30) or "")


def test_a_damaged_compressed_array_found_while_checksums_wait_falls_back(settings: Settings, monkeypatch) -> None:
    """A large index opens before its larger files' checksums are made; a compressed array among them that
    does not decompress is damage found at once (the previous version opens), never an error of another kind."""
    previous, live = _two_versions(settings)
    monkeypatch.setattr("threatqa.versions.VERIFY_CHECKSUMS_BELOW", 0)
    monkeypatch.setattr("threatqa.versions.VERIFY_FILES_BELOW", 0)
    target = max((p for p in _arrays(live / "bm25") if p.suffix == arrays.PACKED), key=lambda p: p.stat().st_size)
    target.chmod(0o644)
    data = target.read_bytes()
    target.write_bytes(data[: len(data) // 2] + b"\xff" * (len(data) - len(data) // 2))  # same size, cut off
    with pytest.raises(IndexMismatch, match=f"{re.escape(target.name)} cannot be decompressed"):
        open_index(settings.index, fallback=False)
    index = open_index(settings.index)
    assert index.folder == previous and target.name in (index.fallback_notice or "")


def test_files_of_a_version_are_read_only(settings: Settings) -> None:
    build_index(settings.docs, settings.index, None, warn=_quiet)
    files = [p for p in current_version(settings.index).rglob("*") if p.is_file()]
    assert files and all(p.stat().st_mode & 0o222 == 0 for p in files)


def test_killed_build_leftovers_are_removed_by_the_next_build(settings: Settings) -> None:
    build_index(settings.docs, settings.index, None, warn=_quiet)
    leftover = settings.index / ".tmp-deadbeef"
    (leftover / "bm25").mkdir(parents=True)
    (leftover / "bm25" / "x.npy").write_bytes(b"x" * 100)
    (leftover / "bm25" / "x.npy").chmod(0o444)
    (settings.docs / "extra.txt").write_text("Cocaine seizures rose.\n", encoding="utf-8")
    build_index(settings.docs, settings.index, None, warn=_quiet)
    assert not leftover.exists()


@pytest.mark.parametrize("fault", ["unicode", "permission", "disk full", "any exception"])
def test_server_starts_on_the_previous_version_whatever_breaks_the_rebuild(
    settings: Settings, monkeypatch, fault: str
) -> None:
    build_index(settings.docs, settings.index, None, warn=_quiet)
    before = current_version(settings.index)
    (settings.docs / "new.txt").write_text("Cocaine seizures rose.\n", encoding="utf-8")
    errors = {
        "unicode": UnicodeEncodeError("utf-8", "\udcff", 0, 1, "surrogates not allowed"),
        "permission": PermissionError(13, "Permission denied"),
        "disk full": OSError(28, "No space left on device"),
        "any exception": RuntimeError("something else"),
    }

    def broken(*args: object, **kwargs: object) -> None:
        raise errors[fault]

    monkeypatch.setattr("threatqa.index.write_store", broken)
    lines: list[str] = []
    engine = Engine.start(settings, build="stale", log=lines.append)
    assert engine.index.folder == before
    assert engine.ask(QUESTION).answered
    assert any("not rebuilt" in n and "previous version" in n for n in engine.status().notices)


def test_document_changed_during_the_build_is_picked_up_next_time(settings: Settings, monkeypatch) -> None:
    target = settings.docs / "late.txt"
    target.write_text("Cocaine seizures rose in 2022.\n", encoding="utf-8")
    real = build_index.__globals__["chunk_documents"]

    def edit_while_chunking(*args: object, **kwargs: object) -> object:
        target.write_text("Heroin seizures fell in 2022.\n", encoding="utf-8")  # saved mid-build
        (settings.docs / "NCA-annual-assessment-speech-2023-07-17.txt").unlink()  # and one removed
        return real(*args, **kwargs)

    monkeypatch.setattr("threatqa.index.chunk_documents", edit_while_chunking)
    warnings: list[str] = []
    build_index(settings.docs, settings.index, None, warn=warnings.append)
    assert any("changed while they were being indexed" in w for w in warnings)
    monkeypatch.setattr("threatqa.index.chunk_documents", real)
    assert is_stale(settings.docs, settings.index, None)
    report = build_index(settings.docs, settings.index, None, warn=_quiet)
    assert report.changed and report.removed == ("NCA-annual-assessment-speech-2023-07-17.txt",)
    assert report.updated == ("late.txt",)
    engine = Engine.start(settings, build="never", log=_quiet)
    assert [d.path for d in engine.documents()] == ["late.txt"]


def _open_files(under: Path | None = None) -> tuple[int, list[str]]:
    """Open files, and those deleted but still open (below `under`)."""
    names = []
    for fd in os.listdir("/proc/self/fd"):
        try:
            names.append(os.readlink(f"/proc/self/fd/{fd}"))
        except OSError:
            continue
    return len(names), [name for name in names if "(deleted)" in name and str(under) in name]


def test_reloads_release_old_versions(settings: Settings) -> None:
    """Six rebuilds while 8 threads answer: no deleted index file stays open, open files stay flat."""
    engine = Engine.start(settings, build="stale", log=_quiet)
    pool = ThreadPoolExecutor(8)
    counts = []
    for round_ in range(6):
        list(pool.map(lambda _: engine.ask(QUESTION), range(24)))
        counts.append(_open_files(settings.index))
        (settings.docs / f"r{round_}.txt").write_text(f"Cocaine round {round_}.\n", encoding="utf-8")
        index_folder(settings, None, _quiet)
    list(pool.map(lambda _: engine.ask(QUESTION), range(24)))
    counts.append(_open_files(settings.index))
    pool.shutdown()
    assert all(not deleted for _, deleted in counts), counts
    assert max(n for n, _ in counts) - counts[0][0] <= 2, counts
    assert len(versions(settings.index)) == 2


def test_index_close_releases_the_store(settings: Settings) -> None:
    build_index(settings.docs, settings.index, None, warn=_quiet)
    index: Index = open_index(settings.index)
    index.chunks([0])
    before = _open_files()[0]
    index.close()
    assert _open_files()[0] == before - 2  # chunks.sqlite and chunks.blocks
    assert index.chunks([0])  # a question still holding it reopens the file


def test_index_files_truncated_under_a_running_engine_do_no_harm(settings: Settings, tiny_model: Path) -> None:
    """Index files of a normal size are read into memory, not mapped: a file truncated (or rewritten)
    under a running server cannot end it with SIGBUS; the server keeps answering from what it read."""
    hybrid = settings.model_copy(update={"model": str(tiny_model)})
    engine = Engine.start(hybrid, build="stale", log=_quiet)
    before = engine.ask(QUESTION)
    for path in [*_arrays(engine.index.folder), *engine.index.folder.rglob("*.faiss")]:
        path.chmod(0o644)
        with open(path, "r+b") as handle:
            handle.truncate(0)
    after = engine.ask(QUESTION)
    assert [p.text for p in after.passages] == [p.text for p in before.passages]
