"""The dense index is exact while small and approximate (IVF-SQ8) above the threshold, with high recall."""

from __future__ import annotations

import shutil
from pathlib import Path

import faiss
import numpy as np
import pytest

from threatqa.dense import VECTORS, DenseConfig, build_dense
from threatqa.embeddings import load_embedder
from threatqa.index import build_index, open_index

CORPUS_FILE = Path(__file__).resolve().parents[1] / "docs" / "NCA-annual-assessment-speech-2023-07-17.txt"


def clustered(n: int, dim: int = 64, seed: int = 0) -> np.ndarray:
    """Unit vectors around a few dozen centres, like text embeddings (uniform noise would mislead)."""
    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((40, dim))
    x = centres[rng.integers(0, 40, n)] + 0.7 * rng.standard_normal((n, dim))
    return np.ascontiguousarray(x / np.linalg.norm(x, axis=1, keepdims=True), dtype=np.float32)


def test_exact_below_the_threshold_approximate_above() -> None:
    vectors = clustered(3000)
    assert isinstance(build_dense(vectors, DenseConfig(ann_threshold=3000)), faiss.IndexFlatIP)
    assert isinstance(build_dense(vectors, DenseConfig(ann_threshold=2999)), faiss.IndexIVFScalarQuantizer)


def test_approximate_recall_at_10_against_exact_search() -> None:
    data = clustered(6100)
    vectors, queries = data[:6000], data[6000:]
    exact = build_dense(vectors, DenseConfig(ann_threshold=10**9))
    approximate = build_dense(vectors, DenseConfig(ann_threshold=1000, nprobe=16))
    truth, found = exact.search(queries, 10)[1], approximate.search(queries, 10)[1]
    recall = np.mean([len(set(f) & set(t)) / 10 for f, t in zip(found.tolist(), truth.tolist())])
    assert recall >= 0.95


@pytest.fixture(scope="module")
def approximate_index(tiny_model: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, object]:
    docs = tmp_path_factory.mktemp("docs")
    shutil.copy(CORPUS_FILE, docs / CORPUS_FILE.name)
    index_dir = tmp_path_factory.mktemp("index")
    embedder = load_embedder(str(tiny_model))
    build_index(docs, index_dir, embedder, warn=lambda m: None, dense=DenseConfig(ann_threshold=1))
    return index_dir, embedder


def test_approximate_index_keeps_vectors_for_incremental_builds(approximate_index: tuple) -> None:
    index_dir, embedder = approximate_index
    index = open_index(index_dir)
    assert isinstance(index.dense.faiss, faiss.IndexIVF) and (index.folder / VECTORS).is_file()
    text = index.document(index.chunks([0])[0].doc_id).text
    texts = [text[start:end] for _row, start, end in index.dense.windows.tolist()]
    stored = index.dense.vectors(np.arange(len(index.dense)))
    assert stored.dtype == np.float32
    np.testing.assert_allclose(stored, embedder.encode_documents(texts), atol=2e-3)  # float16 on disk


def test_document_filter_searches_every_list(approximate_index: tuple) -> None:
    index_dir, embedder = approximate_index
    index = open_index(index_dir)
    mask = np.zeros(len(index), dtype=bool)
    mask[[1, 3]] = True
    rows, _scores = index.dense.search(embedder.encode_query("hostile states"), 10, mask)
    assert set(rows.tolist()) == {1, 3}
