"""Index: manifest, incremental re-index, atomic switch, damage and model checks."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from threatqa import arrays
from threatqa.dense import TermVectors
from threatqa.embeddings import Embedder, load_embedder
from threatqa.errors import IndexMismatch, IndexMissing, ModelUnavailable
from threatqa.index import SCHEMA_VERSION, build_index, current_version, is_stale, open_index
from threatqa.manifest import check_model


class CountingEmbedder(Embedder):
    """The real embedder, counting how many passages it was asked to embed."""

    def __init__(self, inner: Embedder) -> None:
        super().__init__(inner.model, inner.name, inner.fingerprint)
        self.embedded = 0

    def encode_documents(self, texts: list[str], batch_size: int = 32) -> np.ndarray:
        self.embedded += len(texts)
        return super().encode_documents(texts, batch_size)


@pytest.fixture()
def embedder(tiny_model: Path) -> CountingEmbedder:
    return CountingEmbedder(load_embedder(str(tiny_model)))


def _second_doc(
    docs: Path, text: str = "Firearms are smuggled through ports.\n\nBorder Force seized 300 guns.\n"
) -> None:
    (docs / "firearms.md").write_text(text, encoding="utf-8")


def test_manifest_describes_the_index(tmp_path: Path, docs: Path, embedder: CountingEmbedder) -> None:
    report = build_index(docs, tmp_path / "index", embedder)
    index = open_index(tmp_path / "index")
    manifest = index.manifest
    assert manifest.retrievers == ("bm25", "dense")
    assert (manifest.model, manifest.dimension) == (embedder.name, 32)
    assert (manifest.model_fingerprint, manifest.backend, manifest.precision) == (embedder.fingerprint, "torch", "fp32")
    assert manifest.chunk_count == report.passages == len(index)
    assert manifest.window_count == len(index.dense) == index.dense.faiss.ntotal >= len(index)
    (doc,) = manifest.documents.values()
    assert len(doc["sha256"]) == 64 and doc["chunks"] == report.passages
    assert all(len(info["sha256"]) == 64 and info["bytes"] > 0 for info in manifest.files.values())
    assert manifest.schema_version == SCHEMA_VERSION and manifest.id == report.version


def test_incremental_reindex_embeds_only_changes(tmp_path: Path, docs: Path, embedder: CountingEmbedder) -> None:
    index_dir = tmp_path / "index"
    first = build_index(docs, index_dir, embedder)
    windows = open_index(index_dir).manifest.window_count
    before = open_index(index_dir).dense
    words = set(before.terms.words)
    assert embedder.embedded == first.embedded + len(words) and first.embedded == windows  # windows, then words
    vectors_before = before.vectors(before.window_ids(list(range(first.passages))))

    embedder.embedded = 0
    _second_doc(docs)
    added = build_index(docs, index_dir, embedder)
    index = open_index(index_dir)
    new_words = set(index.dense.terms.words) - words
    assert added.added == ("firearms.md",) and added.embedded == index.manifest.window_count - windows
    assert embedder.embedded == added.embedded + len(new_words) and added.reused == windows
    rows = index.rows_for_documents(["NCA-annual-assessment-speech-2023-07-17.txt"]).tolist()
    # carried over as decoded from their codes: unchanged in every dimension whose step (a power of two,
    # dense.lattice_ranges) the new windows left as it was; moved by half the old step where it doubled
    moved = np.abs(index.dense.vectors(index.dense.window_ids(rows)) - vectors_before)
    old_step, new_step = before.ranges[1] / 255, index.dense.ranges[1] / 255
    kept = new_step == old_step
    assert kept.mean() >= 0.75 and (moved[:, kept] <= 1e-6).all()
    np.testing.assert_allclose(moved[:, ~kept], np.broadcast_to(old_step[~kept] / 2, moved[:, ~kept].shape), atol=1e-6)

    embedder.embedded = 0
    _second_doc(docs, "Firearms are smuggled through ports.\n\nBorder Force seized 400 guns.\n")
    updated = build_index(docs, index_dir, embedder)
    assert updated.updated == ("firearms.md",) and 0 < updated.embedded < open_index(index_dir).manifest.window_count

    embedder.embedded = 0
    unchanged = build_index(docs, index_dir, embedder)
    assert not unchanged.changed and embedder.embedded == 0 and unchanged.version == updated.version

    (docs / "firearms.md").unlink()
    removed = build_index(docs, index_dir, embedder)
    assert removed.removed == ("firearms.md",) and embedder.embedded == 0
    assert [d.path for d in open_index(index_dir).documents()] == ["NCA-annual-assessment-speech-2023-07-17.txt"]


def test_a_failed_build_leaves_the_previous_index_loadable(
    tmp_path: Path, docs: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    index_dir = tmp_path / "index"
    first = build_index(docs, index_dir, None)
    _second_doc(docs)

    def crash(*args: object, **kwargs: object) -> None:
        raise KeyboardInterrupt("killed while writing")

    monkeypatch.setattr("threatqa.index.write_store", crash)
    with pytest.raises(KeyboardInterrupt):
        build_index(docs, index_dir, None)
    index = open_index(index_dir)
    assert index.version == first.version
    assert not [p for p in index_dir.iterdir() if p.name.startswith(".tmp-")], "staging folder cleaned up"


def test_stale_detection(tmp_path: Path, docs: Path, embedder: Embedder) -> None:
    index_dir = tmp_path / "index"
    assert is_stale(docs, index_dir, None)
    build_index(docs, index_dir, None)
    assert not is_stale(docs, index_dir, None)
    (docs / "bad.bin").write_bytes(b"\x00")  # an unsupported file still counts as a change once
    assert is_stale(docs, index_dir, None)
    build_index(docs, index_dir, None, warn=lambda m: None)
    assert not is_stale(docs, index_dir, None)
    assert is_stale(docs, index_dir, embedder), "a model the index lacks asks for a rebuild"


def test_missing_and_damaged_index_give_clear_errors(tmp_path: Path, docs: Path) -> None:
    index_dir = tmp_path / "index"
    with pytest.raises(IndexMissing, match="threatqa index"):
        open_index(index_dir)
    build_index(docs, index_dir, None)
    folder = current_version(index_dir)
    store = folder / "chunks.sqlite"
    data = store.read_bytes()
    store.write_bytes(data[: len(data) // 2])
    with pytest.raises(IndexMismatch, match="truncated"):
        open_index(index_dir)
    store.write_bytes(data[:-10] + b"0123456789")
    with pytest.raises(IndexMismatch, match="checksum"):
        open_index(index_dir)
    (folder / "manifest.json").write_text("{not json")
    with pytest.raises(IndexMismatch, match="rebuild"):
        open_index(index_dir)


def test_manifest_disagreeing_with_vectors_is_detected(tmp_path: Path, docs: Path, embedder: Embedder) -> None:
    index_dir = tmp_path / "index"
    build_index(docs, index_dir, embedder)
    folder = current_version(index_dir)
    manifest = json.loads((folder / "manifest.json").read_text())
    manifest["chunk_count"] += 1
    (folder / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(IndexMismatch, match="vectors"):
        open_index(index_dir)


def test_model_is_recognised_by_content_not_path(tmp_path: Path, docs: Path, tiny_model: Path) -> None:
    embedder = load_embedder(str(tiny_model))
    build_index(docs, tmp_path / "index", embedder)
    manifest = open_index(tmp_path / "index").manifest
    assert check_model(manifest, embedder) == []

    moved = tmp_path / "elsewhere" / "model"
    shutil.copytree(tiny_model, moved)
    same = load_embedder(str(moved))
    assert same.fingerprint == embedder.fingerprint and check_model(manifest, same) == []
    assert not is_stale(docs, tmp_path / "index", same), "the same model at another path needs no rebuild"

    config = json.loads((moved / "config.json").read_text())  # another model at the same path
    (moved / "config.json").write_text(json.dumps(config | {"layer_norm_eps": 1e-6}))
    changed = load_embedder(str(moved))
    assert changed.fingerprint != embedder.fingerprint
    with pytest.raises(IndexMismatch, match="threatqa index"):
        check_model(manifest, changed)
    assert is_stale(docs, tmp_path / "index", changed)


def test_another_backend_or_precision_is_noticed(tmp_path: Path, docs: Path, embedder: Embedder) -> None:
    build_index(docs, tmp_path / "index", embedder)
    manifest = open_index(tmp_path / "index").manifest
    other = type("Int8", (), {"name": embedder.name, "fingerprint": embedder.fingerprint, "dimension": 32,
                              "backend": "onnx", "precision": "int8"})()  # fmt: skip
    (notice,) = check_model(manifest, other)
    assert "torch backend (fp32)" in notice and "onnx (int8)" in notice and "threatqa index" in notice


def test_no_silent_downgrade_of_a_hybrid_index(tmp_path: Path, docs: Path, embedder: Embedder) -> None:
    index_dir = tmp_path / "index"
    hybrid = build_index(docs, index_dir, embedder)
    _second_doc(docs)
    with pytest.raises(ModelUnavailable, match="--lexical"):
        build_index(docs, index_dir, None)
    assert open_index(index_dir).version == hybrid.version and open_index(index_dir).has_dense
    lexical = build_index(docs, index_dir, None, allow_lexical=True)
    assert lexical.mode == "lexical" and not open_index(index_dir).has_dense


def test_old_versions_are_pruned_but_the_previous_kept(tmp_path: Path, docs: Path) -> None:
    index_dir = tmp_path / "index"
    versions = []
    for i in range(4):
        _second_doc(docs, f"Version {i} of the firearms note.\n")
        versions.append(build_index(docs, index_dir, None).version)
    kept = sorted(p.name for p in index_dir.iterdir() if p.name.startswith("v-"))
    assert kept == sorted(versions[-2:])
    shutil.rmtree(index_dir / versions[-1])
    with pytest.raises(IndexMissing):
        open_index(index_dir)


def test_every_file_is_checksummed_and_any_altered_byte_refused(tmp_path: Path, docs: Path, embedder: Embedder) -> None:
    index_dir = tmp_path / "index"
    build_index(docs, index_dir, embedder)
    folder = current_version(index_dir)
    listed = set(open_index(index_dir).manifest.files)
    assert listed == {str(p.relative_to(folder)) for p in folder.rglob("*") if p.is_file()} - {"manifest.json"}
    saved = ("windows.npy", "window-counts.npy", "terms.npy", "digests.npy")  # each compressed or not (arrays.py)
    dense = {"dense.faiss", "dense.codes", "terms.json", *(arrays.stored(folder / name).name for name in saved)}
    assert dense | {"chunks.sqlite", "chunks.blocks"} <= listed
    for name in sorted(dense | {"chunks.blocks"}):
        path = folder / name
        data = path.read_bytes()
        path.chmod(0o644)
        path.write_bytes(data[:-1] + bytes([data[-1] ^ 1]))
        with pytest.raises(IndexMismatch, match="checksum"):
            open_index(index_dir, fallback=False)
        path.write_bytes(data)
    assert open_index(index_dir, fallback=False).dense is not None


def _blocks(folder: Path) -> tuple[Path, list[tuple[int, int, int]]]:
    """The text blocks' file of a version and its blocks table (key, offset, size), in key order."""
    import sqlite3

    conn = sqlite3.connect(folder / "chunks.sqlite")
    try:
        return folder / "chunks.blocks", conn.execute("SELECT key, offset, size FROM blocks ORDER BY key").fetchall()
    finally:
        conn.close()


def test_store_text_blocks_are_compressed_and_a_damaged_one_refused(tmp_path: Path, docs: Path) -> None:
    import sqlite3

    import brotli

    from threatqa.store import TEXT_BLOCK

    index_dir = tmp_path / "index"
    build_index(docs, index_dir, None)
    index = open_index(index_dir)
    document = index.document(index.documents()[0].id)
    passages = index.chunks(list(range(len(index))))
    assert all(p.text == document.text[p.start : p.end] for p in passages)
    path, blocks = _blocks(index.folder)
    data = path.read_bytes()
    assert "".join(brotli.decompress(data[o : o + n]).decode() for _, o, n in blocks) == document.text
    assert len(blocks) == -(-len(document.text) // TEXT_BLOCK) and len(data) == sum(n for _, _, n in blocks)
    assert len(data) < 0.45 * len(document.text.encode())
    path.chmod(0o644)
    (index.folder / "chunks.sqlite").chmod(0o644)
    _key, offset, size = blocks[0]
    for damage in ("garbled", "cut short", "past the end"):
        if damage == "garbled":
            path.write_bytes(data[:offset] + b"not brotli".ljust(size, b"!") + data[offset + size :])
        else:  # the blocks table says the block is shorter than it is, or longer than the file
            conn = sqlite3.connect(index.folder / "chunks.sqlite")
            conn.execute(
                "UPDATE blocks SET size = ? WHERE key = ?", (size // 2 if damage == "cut short" else 10**6, _key)
            )
            conn.commit()
            conn.close()
            path.write_bytes(data)
        damaged = open_index(index_dir, verify=False)  # as a large index opens, before its checksums are done
        message = "truncated" if damage == "past the end" else r"text block .* cannot be read"
        with pytest.raises(IndexMismatch, match=message):
            damaged.chunks(list(range(len(index))))
        with pytest.raises(IndexMismatch, match=message):
            damaged.document(document.id)
        damaged.close()
    with pytest.raises(IndexMismatch, match="checksum"):
        open_index(index_dir, fallback=False)


def test_text_blocks_of_unchanged_documents_are_carried_over(
    tmp_path: Path, docs: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A build copies the compressed blocks of texts the previous version holds (Brotli at its best
    quality is slow to compress) and compresses only the new ones."""
    from threatqa import store

    index_dir = tmp_path / "index"
    build_index(docs, index_dir, None)
    first = open_index(index_dir)
    before = first.document(first.documents()[0].id)
    path, blocks = _blocks(first.folder)
    old = [path.read_bytes()[o : o + n] for _, o, n in blocks]
    compressed: list[str] = []
    real = store.compress_block
    monkeypatch.setattr(store, "compress_block", lambda text: compressed.append(text) or real(text))
    _second_doc(docs)
    build_index(docs, index_dir, None)
    second = open_index(index_dir)
    added = next(d for d in second.documents() if d.path == "firearms.md")
    assert "".join(compressed) == second.document(added.id).text  # only the new document's text
    assert second.document(before.id).text == before.text
    path, blocks = _blocks(second.folder)
    assert [path.read_bytes()[o : o + n] for _, o, n in blocks][: len(old)] == old
    assert all(p.text for p in second.chunks(list(range(len(second)))))  # every passage reads back, checked


def test_carried_blocks_must_decompress_to_the_text_read_now(tmp_path: Path, docs: Path) -> None:
    """Blocks are carried over by the hash of the text they hold; blocks that do not decompress to the
    document's text as read now (damaged since the previous version was checked) are compressed afresh."""
    from dataclasses import replace

    from threatqa.store import CHUNKS, ChunkStore, passage_sha256, write_store

    build_index(docs, tmp_path / "index", None)
    index = open_index(tmp_path / "index")
    document = index.document(index.documents()[0].id)
    other = replace(document, text=document.text.replace("cocaine", "heroin"))
    assert other.text != document.text
    lying = ChunkStore(index.store.path, None, {document.id: passage_sha256(other.text)})  # its blocks hold `document`
    (tmp_path / "new").mkdir()
    write_store(tmp_path / "new" / CHUNKS, [other], [], lying)
    assert ChunkStore(tmp_path / "new" / CHUNKS).document(other.id).text == other.text


def test_an_index_of_an_earlier_schema_is_rebuilt(tmp_path: Path, docs: Path) -> None:
    """A version written by an earlier release (another schema) is not read: opening it says to rebuild,
    the docs count as changed, and a build makes a new version from scratch beside it."""
    index_dir = tmp_path / "index"
    build_index(docs, index_dir, None)
    folder = current_version(index_dir)
    manifest = folder / "manifest.json"
    manifest.chmod(0o644)
    manifest.write_text(json.dumps(json.loads(manifest.read_text()) | {"schema_version": SCHEMA_VERSION - 1}))
    with pytest.raises(IndexMismatch, match=f"index schema {SCHEMA_VERSION - 1} is not the supported {SCHEMA_VERSION}"):
        open_index(index_dir, fallback=False)
    assert is_stale(docs, index_dir, None)
    warnings: list[str] = []
    report = build_index(docs, index_dir, None, warn=warnings.append)
    assert report.changed and report.version != folder.name
    assert any("previous index not reused" in w and "schema" in w for w in warnings)
    index = open_index(index_dir)
    assert index.manifest.schema_version == SCHEMA_VERSION and index.chunks([0])[0].text


def test_term_vectors_come_back_with_the_very_codes_saved(tmp_path: Path) -> None:
    """Saved a row per dimension less its median (modulo 256), the codes come back exactly, the
    extremes too: a median near one end and codes at the other wrap around and back."""
    rng = np.random.default_rng(3)
    vectors = rng.standard_normal((40, 16)).astype(np.float32)
    vectors[:25, 0] = 50.0  # dimension 0: median code 127 ...
    vectors[25:, 0] = -50.0  # ... and codes of -127 (a difference of -254)
    vectors[7] = 0.0  # a zero vector stays zero
    terms = TermVectors([f"w{i}" for i in range(40)], vectors)
    terms.save(tmp_path)
    rows = arrays.load(tmp_path / "terms.npy")
    assert rows.shape == (16, 41) and rows.dtype == np.int8 and rows[0, 0] == 127
    again = TermVectors.open(tmp_path)
    np.testing.assert_array_equal(again.codes(), terms.codes())
    assert again.words == terms.words and not again.vectors[7].any()
    empty = tmp_path / "empty"
    empty.mkdir()
    TermVectors([], np.zeros((0, 16), np.float32)).save(empty)
    assert TermVectors.open(empty).vectors.shape == (0, 16)


def test_term_vectors_are_int8_and_read_back_within_2e3(tmp_path: Path, docs: Path, embedder: Embedder) -> None:
    index_dir = tmp_path / "index"
    build_index(docs, index_dir, embedder)
    index = open_index(index_dir)
    terms = index.dense.terms
    assert arrays.load(index.folder / "terms.npy").dtype == np.int8
    words = terms.words[:50]
    np.testing.assert_allclose(terms.of(words), embedder.encode_documents(words), atol=1e-2)
    cosines = terms.of(words) @ terms.of(words).T
    np.testing.assert_allclose(
        cosines, embedder.encode_documents(words) @ embedder.encode_documents(words).T, atol=2e-3
    )
    again = tmp_path / "again"
    again.mkdir()
    terms.save(again)  # what an incremental build carries over is saved unchanged
    np.testing.assert_array_equal(arrays.load(again / "terms.npy"), arrays.load(index.folder / "terms.npy"))


def test_text_blocks_made_beside_the_build_are_the_stored_ones_and_stop_when_told(tmp_path: Path) -> None:
    import threading

    import brotli

    from threatqa.ingest import load_documents
    from threatqa.store import TEXT_BLOCK, text_blocks

    docs = tmp_path / "docs"
    docs.mkdir()
    (docs / "long.txt").write_text("\n\n".join(f"Paragraph {i} on cocaine routes and ports." for i in range(400)))
    documents = load_documents(docs, 10)
    made = text_blocks(documents)
    assert [len(b) for b in made] == [-(-len(d.text) // TEXT_BLOCK) for d in documents]
    assert "".join(brotli.decompress(b).decode() for b in made[0]) == documents[0].text
    stop = threading.Event()
    stop.set()
    assert text_blocks(documents, stop=stop) == [], "a stopped build's blocks are not made"
    build_index(docs, tmp_path / "index", None, warn=lambda m: None)  # lexical: the blocks are all there is to wait for
    index = open_index(tmp_path / "index")
    assert index.store.document(documents[0].id).text == documents[0].text


def test_live_version_reads_current_again_only_when_the_file_changed(tmp_path: Path, monkeypatch) -> None:
    import os

    import threatqa.versions as versions

    for name in ("v-1", "v-2", "v-3"):
        (tmp_path / name).mkdir()
    (tmp_path / "CURRENT").write_text("v-1\n")
    reads: list[Path] = []
    read = versions.current_version
    monkeypatch.setattr(versions, "current_version", lambda d: reads.append(d) or read(d))
    live = versions.LiveVersion(tmp_path)
    assert live() == tmp_path / "v-1" and live() == tmp_path / "v-1"
    assert len(reads) == 1  # the second call only looked at the file's stat
    (tmp_path / "next").write_text("v-2\n")
    os.replace(tmp_path / "next", tmp_path / "CURRENT")  # as a build switches versions
    assert live() == tmp_path / "v-2" and len(reads) == 2
    stat = os.stat(tmp_path / "CURRENT")
    (tmp_path / "CURRENT").write_text("v-3\n")  # rewritten in place, same size: the time tells
    os.utime(tmp_path / "CURRENT", ns=(stat.st_atime_ns, stat.st_mtime_ns + 1_000_000))
    assert live() == tmp_path / "v-3"
    (tmp_path / "CURRENT").unlink()
    assert live() is None and live() is None and len(reads) == 5  # no file: read (and found missing) each time
