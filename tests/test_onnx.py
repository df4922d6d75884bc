"""The ONNX Runtime backend gives the vectors and the answers of the PyTorch backend (tiny local model)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("onnxruntime")

from threatqa import onnx_backend
from threatqa.embeddings import load_embedder
from threatqa.onnx_backend import OnnxEmbedder, cache_folder
from threatqa.retrieval import Retriever
from tokens import ascii_texts

CORPUS_FILE = Path(__file__).resolve().parents[1] / "docs" / "NCA-annual-assessment-speech-2023-07-17.txt"
TEXTS = [p for p in CORPUS_FILE.read_text(encoding="utf-8").split("\n\n") if p.strip()][:40]
QUESTIONS = ["What is the threat from ransomware?", "Which hostile states are named?", "How is cocaine smuggled?"]


@pytest.fixture(scope="module", autouse=True)
def user_cache(tmp_path_factory: pytest.TempPathFactory) -> object:
    """The export goes to a cache folder of the tests' own, not the user's."""
    saved = onnx_backend.USER_CACHE
    onnx_backend.USER_CACHE = tmp_path_factory.mktemp("cache")
    yield onnx_backend.USER_CACHE
    onnx_backend.USER_CACHE = saved


@pytest.fixture(scope="module")
def backends(tiny_model: Path) -> dict[str, object]:
    int8 = load_embedder(str(tiny_model), backend="onnx")
    return {
        "torch": load_embedder(str(tiny_model)),
        "fp32": OnnxEmbedder(int8.folder, int8.name, quantize=False),
        "int8": int8,
    }


def cosines(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return (a * b).sum(axis=1)


def test_export_is_cached_in_the_user_cache_not_the_model_folder(tiny_model: Path, backends: dict) -> None:
    folder = cache_folder(backends["torch"].fingerprint)
    assert folder.parent == onnx_backend.USER_CACHE and backends["int8"].folder == folder
    assert not [p for p in tiny_model.rglob("*.onnx")], "nothing written into the model folder"
    assert (backends["int8"].backend, backends["int8"].precision, backends["fp32"].precision) == (
        "onnx",
        "int8",
        "fp32",
    )
    assert {"model.onnx", "model-int8.onnx", "tokenizer.json", "spec.json"} <= {p.name for p in folder.iterdir()}
    stamp = (folder / "model.onnx").stat().st_mtime_ns
    again = load_embedder(str(tiny_model), backend="onnx")
    assert (folder / "model.onnx").stat().st_mtime_ns == stamp, "a second load re-exported the model"
    assert again.dimension == backends["torch"].dimension and again.name == str(tiny_model)


def test_fp32_matches_torch_and_int8_is_close(backends: dict) -> None:
    torch_docs = backends["torch"].encode_documents(TEXTS)
    fp32, int8 = backends["fp32"].encode_documents(TEXTS), backends["int8"].encode_documents(TEXTS)
    assert fp32.dtype == np.float32 and fp32.shape == torch_docs.shape
    assert cosines(torch_docs, fp32).min() > 0.9999
    assert cosines(torch_docs, int8).min() > 0.99  # measured 0.99997 on this model
    for question in QUESTIONS:
        q = backends["torch"].encode_query(question)
        assert cosines(q, backends["fp32"].encode_query(question)).min() > 0.9999
        assert abs(float(np.linalg.norm(backends["int8"].encode_query(question))) - 1) < 1e-5


def test_prompts_are_honoured(tmp_path: Path, backends: dict) -> None:
    import json
    import shutil

    folder = backends["int8"].folder
    copy = tmp_path / "with-prompts"
    shutil.copytree(folder, copy)
    spec = json.loads((copy / "spec.json").read_text()) | {"query_prompt": "query: ", "document_prompt": "passage: "}
    (copy / "spec.json").write_text(json.dumps(spec))
    prompted = OnnxEmbedder(copy, "x", quantize=False)
    plain = backends["fp32"]
    np.testing.assert_allclose(prompted.encode_query("water"), plain.encode_query("query: water"), atol=1e-6)
    np.testing.assert_allclose(
        prompted.encode_documents(["water"]), plain.encode_documents(["passage: water"]), atol=1e-6
    )


def test_unknown_backend_names_the_choices(tiny_model: Path) -> None:
    from threatqa.errors import ModelUnavailable

    with pytest.raises(ModelUnavailable, match=r"'tensorflow'.*\['torch', 'onnx', 'onnx-fp32'\]"):
        load_embedder(str(tiny_model), backend="tensorflow")


def test_retrieval_with_int8_agrees_with_torch(tmp_path: Path, docs: Path, backends: dict) -> None:
    """Top-5 overlap of hybrid search over the shipped corpus, PyTorch vs ONNX int8 (tiny random model)."""
    from threatqa.index import build_index, open_index

    build_index(docs, tmp_path / "index", backends["torch"], warn=lambda m: None)
    index = open_index(tmp_path / "index")
    overlaps = []
    for question in QUESTIONS:
        ours = Retriever(index, backends["torch"]).search(question, 5)
        theirs = Retriever(index, backends["int8"]).search(question, 5)
        overlaps.append(len({h.chunk.id for h in ours.hits} & {h.chunk.id for h in theirs.hits}) / 5)
    assert np.mean(overlaps) >= 0.8


def test_asking_with_another_backend_than_the_index_was_built_with_says_so(
    tmp_path: Path, docs: Path, tiny_model: Path, backends: dict
) -> None:
    from threatqa.config import Settings
    from threatqa.engine import Engine

    settings = Settings.load(docs=docs, index=tmp_path / "index", audit=tmp_path / "a.sqlite3", model=str(tiny_model))
    Engine.start(settings, log=lambda m: None)  # built with torch
    answer = Engine.start(settings.model_copy(update={"backend": "onnx"}), build="never", log=lambda m: None).ask(
        "fraud"
    )
    (notice,) = [n for n in answer.notices if "backend" in n]
    assert "torch backend (fp32)" in notice and "onnx (int8)" in notice and "threatqa index" in notice


def test_words_embedded_on_their_own_session_match_the_query_session_even_while_it_runs(backends: dict) -> None:
    from concurrent.futures import ThreadPoolExecutor

    words = ["cocaine", "smuggled", "ransomware"]
    for name in ("torch", "int8", "fp32"):
        embedder = backends[name]
        expected = embedder.encode_queries(words)
        with ThreadPoolExecutor(2) as pool:  # the question on one thread, its words on another, as a search runs them
            futures = [pool.submit(embedder.encode_words, words) for _ in range(4)]
            for question in QUESTIONS * 3:
                embedder.encode_query(question)
            got = [f.result() for f in futures]
        for vectors in got:
            np.testing.assert_allclose(vectors, expected, atol=1e-6, err_msg=name)


def test_short_ascii_texts_fit_untokenized_exactly_where_counting_says_they_fit(tmp_path: Path, backends: dict) -> None:
    import json
    import shutil

    copy = tmp_path / "with-prompt"  # a prompt, which the texts may join
    shutil.copytree(backends["int8"].folder, copy)
    spec = json.loads((copy / "spec.json").read_text()) | {"document_prompt": "passage:"}
    (copy / "spec.json").write_text(json.dumps(spec))
    embedders = {**backends, "prompted": OnnxEmbedder(copy, "x")}
    for name, embedder in embedders.items():
        sure = embedder._sure
        assert 0 < sure < embedder.max_tokens, name
        texts = [*ascii_texts(range(sure - 10, sure + 120, 5), seed=1), "é" * 20, "naïve " * 40]
        counted = [n <= embedder.max_tokens for n in embedder.count_tokens(texts)]
        assert embedder.fits(texts) == counted, name
        assert True in counted and False in counted, name  # both sides of the limit were tried
        assert embedder.fits(["!" * sure]) == [True] and max(embedder.count_tokens(["!" * sure])) <= embedder.max_tokens
