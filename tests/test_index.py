"""Index: manifest, incremental re-index, atomic switch, damage and model checks."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from threatqa.embeddings import Embedder, load_embedder
from threatqa.errors import IndexMismatch, IndexMissing
from threatqa.index import SCHEMA_VERSION, build_index, check_model, current_version, is_stale, open_index


class CountingEmbedder(Embedder):
    """The real embedder, counting how many passages it was asked to embed."""

    def __init__(self, inner: Embedder) -> None:
        super().__init__(inner.model, inner.name)
        self.embedded = 0

    def encode_documents(self, texts: list[str], progress: bool = False, batch_size: int = 32) -> np.ndarray:
        self.embedded += len(texts)
        return super().encode_documents(texts, progress, batch_size)


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
    assert manifest.chunk_count == report.passages == len(index) == index.dense.ntotal
    (doc,) = manifest.documents.values()
    assert len(doc["sha256"]) == 64 and doc["chunks"] == report.passages
    assert all(len(info["sha256"]) == 64 and info["bytes"] > 0 for info in manifest.files.values())
    assert manifest.schema_version == SCHEMA_VERSION and manifest.id == report.version


def test_incremental_reindex_embeds_only_changes(tmp_path: Path, docs: Path, embedder: CountingEmbedder) -> None:
    index_dir = tmp_path / "index"
    first = build_index(docs, index_dir, embedder)
    assert embedder.embedded == first.passages
    vectors_before = open_index(index_dir).vectors(list(range(first.passages)))

    embedder.embedded = 0
    _second_doc(docs)
    added = build_index(docs, index_dir, embedder)
    assert added.added == ("firearms.md",) and embedder.embedded == added.passages - first.passages
    index = open_index(index_dir)
    rows = index.rows_for_documents(["NCA-annual-assessment-speech-2023-07-17.txt"]).tolist()
    np.testing.assert_allclose(index.vectors(rows), vectors_before, atol=1e-6)

    embedder.embedded = 0
    _second_doc(docs, "Firearms are smuggled through ports.\n\nBorder Force seized 400 guns.\n")
    updated = build_index(docs, index_dir, embedder)
    assert updated.updated == ("firearms.md",) and 0 < embedder.embedded < updated.passages

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

    monkeypatch.setattr("threatqa.index._write_store", crash)
    with pytest.raises(KeyboardInterrupt):
        build_index(docs, index_dir, None)
    index = open_index(index_dir)
    assert index.version == first.version
    assert not [p for p in index_dir.iterdir() if p.name.startswith(".tmp-")], "staging folder cleaned up"


def test_stale_detection(tmp_path: Path, docs: Path) -> None:
    index_dir = tmp_path / "index"
    assert is_stale(docs, index_dir, None)
    build_index(docs, index_dir, None)
    assert not is_stale(docs, index_dir, None)
    (docs / "bad.bin").write_bytes(b"\x00")  # an unsupported file still counts as a change once
    assert is_stale(docs, index_dir, None)
    build_index(docs, index_dir, None, warn=lambda m: None)
    assert not is_stale(docs, index_dir, None)
    assert is_stale(docs, index_dir, "some/model"), "a model the index lacks asks for a rebuild"


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


def test_model_mismatch_says_how_to_rebuild(tmp_path: Path, docs: Path, embedder: Embedder) -> None:
    build_index(docs, tmp_path / "index", embedder)
    manifest = open_index(tmp_path / "index").manifest
    check_model(manifest, embedder.name, 32)
    with pytest.raises(IndexMismatch, match="threatqa index"):
        check_model(manifest, "other/model", 32)
    with pytest.raises(IndexMismatch, match="384-d"):
        check_model(manifest, embedder.name, 384)


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
