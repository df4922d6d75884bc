"""Retrieval and answers: hybrid and lexical paths, abstention, awkward questions, filters."""

from __future__ import annotations

import itertools
import json
import re
import threading
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest

from threatqa.config import Settings
from threatqa.engine import Engine
from threatqa.errors import QuestionError, QuestionTooLong
from threatqa.index import open_index
from threatqa.retrieval import _Read

GOLD = [json.loads(line) for line in (Path(__file__).parent / "data" / "gold_questions.jsonl").read_text().splitlines()]
OFF_TOPIC = ["Who won the football match last night?", "banana bread recipe", "What is the boiling point of water?"]


@pytest.fixture()
def engine(settings: Settings) -> Engine:
    return Engine.start(settings, build="missing", log=lambda m: None)


@pytest.fixture()
def hybrid(settings: Settings, tiny_model: Path) -> Engine:
    return Engine.start(settings.model_copy(update={"model": str(tiny_model)}), build="stale", log=lambda m: None)


def _rank(answer, evidence: list[str]) -> int | None:
    return next((p.rank for p in answer.passages if any(e in p.text for e in evidence)), None)


@pytest.mark.parametrize("item", GOLD, ids=[g["q"][:40] for g in GOLD])
def test_gold_questions_are_answered_in_the_top_three(engine: Engine, item: dict) -> None:
    answer = engine.ask(item["q"], k=3)
    assert answer.answered
    assert _rank(answer, item["evidence"]) is not None


@pytest.mark.parametrize("question", OFF_TOPIC)
def test_off_topic_questions_abstain(engine: Engine, question: str) -> None:
    answer = engine.ask(question)
    assert not answer.answered
    assert answer.passages, "the nearest passages are still shown, marked as not answering"


def test_every_passage_is_an_exact_quote(engine: Engine, settings: Settings) -> None:
    index = engine.index
    for item in GOLD:
        for passage in engine.ask(item["q"], k=5).passages:
            cite = passage.citation
            text = index.document(cite.document_id).text
            assert passage.text == text[cite.start : cite.end]
            assert (settings.docs / cite.source).read_text(encoding="utf-8")[cite.start : cite.end] == passage.text


def test_hybrid_mode_runs_dense_and_bm25(hybrid: Engine) -> None:
    answer = hybrid.ask(GOLD[0]["q"], k=5)
    assert answer.mode == "hybrid" and answer.model is not None
    assert all(p.dense_score is not None for p in answer.passages)
    assert any(p.lexical_score is not None for p in answer.passages)
    assert _rank(answer, GOLD[0]["evidence"]) is not None


def test_hybrid_answers_do_not_depend_on_which_side_finishes_first(
    hybrid: Engine, monkeypatch: pytest.MonkeyPatch
) -> None:
    retriever = hybrid._live.retriever
    lexical_search, dense, prefetch = retriever.index.lexical.search, retriever._dense, _Read.prefetch
    readers: list[str] = []  # the threads that read passages ahead, one entry per read
    monkeypatch.setattr(
        _Read, "prefetch", lambda self, *args: (readers.append(threading.current_thread().name), prefetch(self, *args))
    )

    def run() -> list[list[tuple]]:
        readers.clear()
        return [
            [
                (h.chunk.id, h.score, h.relevance, h.lexical_score, h.dense_score)
                for h in retriever.search(item["q"], 5).hits
            ]
            for item in GOLD
        ]

    def slow(function: Callable) -> Callable:
        return lambda *args: (time.sleep(0.02), function(*args))[1]

    monkeypatch.setattr(retriever, "_dense", slow(dense))
    lexical_first = run()
    assert len(readers) == len(GOLD) and all(name.startswith("threatqa-lexical") for name in readers)
    monkeypatch.setattr(retriever, "_dense", dense)
    monkeypatch.setattr(retriever.index.lexical, "search", slow(lexical_search))
    assert run() == lexical_first
    assert readers == [threading.current_thread().name] * len(GOLD)  # the dense side's, on the asking thread


def test_dense_search_matches_brute_force(hybrid: Engine) -> None:
    index = hybrid.index
    embedder = hybrid._embedder
    windows = index.dense.windows
    passages = index.chunks(list(range(len(index))))
    vectors = embedder.encode_documents([passages[row].text[start:end] for row, start, end in windows.tolist()])
    query = embedder.encode_query("cocaine consumption in the UK")
    decoded = index.dense.vectors(np.arange(len(windows)))  # the index keeps 8-bit codes of the vectors
    step = index.dense.ranges[1] / 255  # each component within half a step of its vector's
    assert np.all(np.abs(decoded - vectors) <= step / 2 + 1e-6)
    np.testing.assert_allclose(decoded @ query[0], vectors @ query[0], atol=float(np.abs(query[0]) @ step / 2))
    best = np.full(len(index), -2.0)  # each passage scores by its best window
    np.maximum.at(best, windows[:, 0], decoded @ query[0])
    rows, scores = index.dense.search(query, 5)
    np.testing.assert_allclose(scores, np.sort(best)[::-1][:5], rtol=1e-5)
    assert rows.tolist() == np.argsort(-best, kind="stable")[:5].tolist()
    np.testing.assert_allclose(index.dense.scores(query, rows.tolist()), scores, rtol=1e-5)


def test_lexical_mode_when_no_model(engine: Engine) -> None:
    answer = engine.ask(GOLD[0]["q"])
    assert answer.mode == "lexical" and answer.model is None
    assert all(p.dense_score is None for p in answer.passages)


def test_no_overlapping_passages_in_one_answer(engine: Engine) -> None:
    answer = engine.ask("organised crime in the UK", k=20)
    spans = sorted((p.citation.source, p.citation.start, p.citation.end) for p in answer.passages)
    for (src_a, _, end_a), (src_b, start_b, _) in itertools.pairwise(spans):
        assert src_a != src_b or end_a <= start_b


def test_k_larger_than_the_index(engine: Engine) -> None:
    assert len(engine.index) < 100
    answer = engine.ask("crime", k=100)
    assert 0 < len(answer.passages) <= len(engine.index)


@pytest.mark.parametrize("question", ["\x00\x01", "the of and is", "???"])
def test_stopword_questions_are_answered_without_error(engine: Engine, question: str) -> None:
    answer = engine.ask(question)
    assert not answer.answered and answer.notices


@pytest.mark.parametrize(
    ("question", "k", "documents", "message"),
    [
        ("", None, None, "empty"),
        ("   ", None, None, "empty"),
        (None, None, None, "must be text, not nothing"),
        (["a list"], None, None, "must be text, not list"),
        ("crime", 0, None, "from 1 to 100"),
        ("crime", -1, None, "from 1 to 100"),
        ("crime", 10**9, None, "from 1 to 100"),
        ("crime", "5", None, "from 1 to 100"),
        ("crime", True, None, "from 1 to 100"),
        ("crime", None, "NCA.txt", "must be a list"),
        ("crime", None, [1, 2], "must be a list"),
        ("crime", None, ["x"] * 5000, "at most 1000"),
        ("crime", None, [f"nope-{i}" for i in range(50)], "50 unknown document(s): 'nope-0', "),
    ],
)
def test_one_validation_for_every_front_end(
    engine: Engine, question: object, k: object, documents: object, message: str
) -> None:
    with pytest.raises(QuestionError, match=re.escape(message)) as raised:
        engine.ask(question, k, documents)  # type: ignore[arg-type]
    assert len(str(raised.value)) < 500  # a few of the bad values quoted, never the whole request


def test_very_long_question_is_refused_by_the_engine_and_truncated_by_the_retriever(engine: Engine) -> None:
    with pytest.raises(QuestionTooLong, match=f"the limit is {engine.settings.max_question_chars}"):
        engine.ask("cocaine wastewater " * 2000)
    result = engine.retriever.search("cocaine wastewater " * 2000, 5)
    assert any("truncated" in notice for notice in result.notices)
    assert len(result.question) <= engine.settings.max_question_chars


def test_document_filter(engine: Engine, settings: Settings) -> None:
    (settings.docs / "other.md").write_text("Cocaine seizures at Felixstowe rose sharply.\n", encoding="utf-8")
    engine = Engine.start(settings, build="stale", log=lambda m: None)
    only_other = engine.ask("cocaine", documents=["other.md"])
    assert {p.citation.source for p in only_other.passages} == {"other.md"}
    assert only_other.searched == ("other.md",)
    with pytest.raises(QuestionError, match="1 unknown document"):  # as the API and the UI say it
        engine.ask("cocaine", documents=["no-such-document.txt"])


def test_citations_carry_hashes_and_versions(engine: Engine) -> None:
    passage = engine.ask(GOLD[0]["q"]).passages[0]
    cite = passage.citation
    assert cite.index_version == engine.index.version
    assert len(cite.document_sha256) == 64 and len(cite.passage_sha256) == 64
    assert cite.location().startswith("para") and passage.reference().startswith("NCA annual assessment speech")


def test_reload_switches_to_a_new_index_version(engine: Engine, settings: Settings) -> None:
    old = engine.index.version
    assert not engine.reload()
    (settings.docs / "new.md").write_text("Ransomware hit 30 hospitals.\n", encoding="utf-8")
    Engine.start(settings, build="stale", log=lambda m: None)
    assert engine.reload() and engine.index.version != old
    assert engine.ask("ransomware hospitals").passages[0].citation.source == "new.md"
    assert open_index(settings.index).version == engine.index.version


def test_a_damaged_new_version_is_refused_and_the_old_one_kept(engine: Engine, settings: Settings) -> None:
    old = engine.index.version
    (settings.docs / "new.md").write_text("Ransomware hit 30 hospitals.\n", encoding="utf-8")
    Engine.start(settings, build="stale", log=lambda m: None)
    new_folder = settings.index / (settings.index / "CURRENT").read_text().strip()
    (new_folder / "chunks.sqlite").write_bytes(b"garbage")
    answer = engine.ask("cocaine")
    assert answer.index_version == old and answer.answered
    assert not engine.reload(), "the refused version is not retried on every question"


def test_cross_encoder_reranks_the_fused_candidates(settings: Settings, tiny_reranker: Path) -> None:
    engine = Engine.start(
        settings.model_copy(update={"rerank_model": str(tiny_reranker)}), build="missing", log=lambda m: None
    )
    answer = engine.ask(GOLD[0]["q"], k=5)
    assert answer.mode == "lexical+rerank"
    scores = [p.rerank_score for p in answer.passages]
    assert all(s is not None for s in scores) and scores == sorted(scores, reverse=True)
    assert [p.rank for p in answer.passages] == list(range(1, len(answer.passages) + 1))


def test_unavailable_reranker_is_skipped_with_a_notice(settings: Settings, tmp_path: Path) -> None:
    notices: list[str] = []
    engine = Engine.start(
        settings.model_copy(update={"rerank_model": str(tmp_path / "no-such-reranker")}), log=notices.append
    )
    assert engine.ask(GOLD[0]["q"]).mode == "lexical"
    assert any("re-ranking skipped" in n for n in notices)


def test_citations_say_where_the_date_came_from(engine: Engine) -> None:
    answer = engine.ask(GOLD[0]["q"])
    cite = answer.passages[0].citation
    assert (cite.date, cite.date_source) == ("2023-07-17", "dateline")  # stored with the document, not re-read
    assert answer.to_json()["passages"][0]["date_source"] == "dateline"
    assert engine.documents()[0].title_source
