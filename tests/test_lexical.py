"""The lexical index against a plain reimplementation of its definition (BM25, Lucene's variant)."""

from __future__ import annotations

import math
import os
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest

from threatqa.chunking import paragraphs, sentences
from threatqa.errors import IndexMismatch
from threatqa.lexical import SENTENCE_WEIGHT, LexicalIndex, word_tokens
from threatqa.lexical_bm25 import K1, B
from threatqa.lexical_chars import _CHARS, CharView, _ngram_counts

TEXTS = [
    "Organised crime groups launder money through cash-intensive businesses. Couriers move cash abroad.",
    "Fraud is the most common crime in the UK. Phishing emails and romance fraud target older people.",
    "Cocaine purity remains high. Organized gangs import cocaine through ports; cocaine use rises.",
    "County lines gangs exploit children to move drugs from cities to coastal towns.",
    "",
    "a b c",  # no searchable word
    "Firearms are imported from Europe. Criminals convert blank-firing weapons into lethal firearms.",
]
QUESTIONS = [
    "How do organised crime groups launder money?",
    "cocaine cocaine purity",
    "Which fraud targets older people?",
    "firearms conversion in Europe",
    "gangs",
]


def _bm25(corpus: list[list[str]], query: list[str]) -> list[float]:
    """BM25 of query over each tokenised text, written out term by term."""
    n, mean = len(corpus), sum(map(len, corpus)) / len(corpus)
    df = Counter(t for tokens in corpus for t in set(tokens))
    scores = []
    for tokens in corpus:
        tf, total = Counter(tokens), 0.0
        for term in query:
            if tf[term]:
                idf = math.log(1 + (n - df[term] + 0.5) / (df[term] + 0.5))
                total += idf * tf[term] / (tf[term] + K1 * (1 - B + B * len(tokens) / mean))
        scores.append(total)
    return scores


def _sentence_texts(text: str) -> list[str]:
    return [text[s.start : s.end] for p in paragraphs(text) for s in sentences(text, p)] or [text]


@pytest.fixture(scope="module")
def index(tmp_path_factory: pytest.TempPathFactory) -> LexicalIndex:
    return LexicalIndex.build(TEXTS, tmp_path_factory.mktemp("lexical") / "bm25")


@pytest.mark.parametrize("question", QUESTIONS)
def test_word_view_equals_bm25_of_passage_plus_half_its_best_sentence(index: LexicalIndex, question: str) -> None:
    query = [t for t in word_tokens(question) if t in index.vocabulary]
    passages = _bm25([word_tokens(t) for t in TEXTS], query)
    sents = [s for t in TEXTS for s in _sentence_texts(t)]
    sentence_scores = iter(_bm25([word_tokens(s) for s in sents], query))
    best = [max(next(sentence_scores) for _ in _sentence_texts(t)) for t in TEXTS]
    expected = np.array(passages) + SENTENCE_WEIGHT * np.array(best)

    rows, scores = index._word_scores(index.terms(question))
    got = np.zeros(len(TEXTS))
    got[rows] = scores
    np.testing.assert_allclose(got, expected, rtol=1e-5)
    assert set(rows) == set(np.flatnonzero(expected))


def test_word_view_keeps_the_best_rows_with_ties_to_the_lower_row(tmp_path: Path) -> None:
    texts = ["cash couriers"] * 5 + ["cash"] * 4 + ["couriers move cash abroad"]  # many exact ties
    index = LexicalIndex.build(texts, tmp_path / "ties")
    terms = index.terms("cash couriers")
    rows, scores = index._word_scores(terms)
    for keep in range(1, len(texts) + 1):
        best = sorted(zip(-scores, rows))[:keep]  # best first, ties by row
        kept_rows, kept = index._word_scores(terms, keep=keep)
        assert kept_rows.tolist() == sorted(row for _, row in best)  # in row order
        np.testing.assert_array_equal(kept, scores[np.isin(rows, kept_rows)])
    mask = np.arange(len(texts)) % 2 == 0
    assert index._word_scores(terms, mask=mask, keep=3)[0].tolist() == [0, 2, 4]


@pytest.fixture(scope="module")
def skewed(tmp_path_factory: pytest.TempPathFactory) -> tuple[LexicalIndex, list[str]]:
    """600 passages of 1-4 sentences over 9 words of very different frequencies: many passages per
    question, exact ties, and terms whose bounds fall below the best scores."""
    rng = np.random.default_rng(7)
    words = ["cash", "couriers", "harbour", "fraud", "cartel", "laundering", "firearms", "smuggling", "border"]
    weights = np.array([40, 20, 12, 8, 5, 3, 2, 1, 1], dtype=float)
    texts = []
    for _ in range(600):
        sentences = [" ".join(rng.choice(words, int(rng.integers(2, 8)), p=weights / weights.sum()))
                     for _ in range(int(rng.integers(1, 5)))]  # fmt: skip
        texts.append(". ".join(s.capitalize() for s in sentences) + ".")
    return LexicalIndex.build(texts, tmp_path_factory.mktemp("skewed") / "bm25"), words


@pytest.mark.parametrize("seed", range(12))
def test_best_rows_skipping_low_terms_are_those_of_scoring_every_row(
    skewed: tuple[LexicalIndex, list[str]], seed: int
) -> None:
    """Once `keep` passages are held, the word view visits only passages with a term that could still
    carry one into them; the rows and scores kept are those of scoring every passage, ties to the lower row."""
    index, words = skewed
    rng = np.random.default_rng(seed)
    question = " ".join(rng.choice(words, int(rng.integers(2, 6))))  # a word may come twice
    terms = index.terms(question)
    rows, scores = index._word_scores(terms)  # every passage with a term (the heap never full before the end)
    mask = rng.random(index.count) < 0.7
    for keep in (1, 3, 10, 40, 150):
        for allowed in (None, mask):
            inside = np.ones(len(rows), bool) if allowed is None else allowed[rows]
            best = sorted(zip(-scores[inside], rows[inside]))[:keep]
            kept_rows, kept = index._word_scores(terms, mask=allowed, keep=keep)
            assert kept_rows.tolist() == sorted(row for _, row in best)
            np.testing.assert_array_equal(kept, scores[np.isin(rows, kept_rows)])  # the very same floats
    # the questions reach the skipping: a term's bound below the best scores kept
    bounds = index.idf[terms, 0] + SENTENCE_WEIGHT * index.idf[terms, 1]
    assert bounds.min() < np.sort(scores)[-10] or len(set(terms.tolist())) == 1


def _char_bm25(texts: list[str], question: str) -> np.ndarray:
    """BM25 of the question's character n-grams in each text, from a dense count matrix."""
    counts = _CHARS.transform(texts).toarray()
    n, lengths, df = len(texts), counts.sum(axis=1), (counts > 0).sum(axis=0)
    idf = np.log(1 + (n - df + 0.5) / (df + 0.5))
    weights = idf * counts / (counts + K1 * (1 - B + B * lengths[:, None] / lengths.mean()))
    return weights @ _CHARS.transform([question]).toarray().ravel()


@pytest.mark.parametrize("question", QUESTIONS)
def test_char_view_equals_bm25_of_character_ngrams_in_passages_and_best_sentences(
    index: LexicalIndex, question: str
) -> None:
    sentence_scores = iter(_char_bm25([s for t in TEXTS for s in _sentence_texts(t)], question))
    best = [max(next(sentence_scores) for _ in _sentence_texts(t)) for t in TEXTS]
    query = _ngram_counts(question)
    reads = np.zeros(index.largest, np.uint8)  # reused from read to read
    for rows in (np.arange(len(TEXTS)), np.array([1, 2, 6]), np.array([6, 0])):  # all; some; out of file order
        passage, sentence = index.chars.scores(query, index.sentence_starts[rows], index.sentence_ends[rows], reads)
        np.testing.assert_allclose(passage, _char_bm25(TEXTS, question)[rows], rtol=1e-5)
        np.testing.assert_allclose(sentence, np.array(best)[rows], rtol=1e-5)
    with pytest.raises(ValueError, match="too small"):
        index.chars.scores(query, index.sentence_starts, index.sentence_ends, np.zeros(index.largest - 1, np.uint8))


@pytest.mark.parametrize("text", [*TEXTS, *QUESTIONS, "Ärzte naïve café – São Paulo 東京 x", "?!", "aaaaaa aaaaaa"])
def test_question_ngrams_are_counted_as_the_index_counts_them(text: str) -> None:
    expected = _CHARS.transform([text])
    expected.sort_indices()
    hashes, counts = _ngram_counts(text)
    np.testing.assert_array_equal(hashes, expected.indices)
    np.testing.assert_array_equal(counts, expected.data)


def test_search_ranks_by_both_views_and_respects_the_mask(index: LexicalIndex) -> None:
    rows, scores = index.search("How do organised crime groups launder money?", 3)
    assert rows[0] == 0 and list(scores) == sorted(scores, reverse=True)
    rows, _ = index.search("cocaine", 5)
    assert rows[0] == 2
    mask = np.ones(len(TEXTS), dtype=bool)
    mask[2] = False
    assert 2 not in index.search("cocaine", 5, mask)[0]
    assert not len(index.search("the of and", 5)[0])  # stopwords only: nothing to search for


def test_concurrent_searches_give_the_same_answers_as_one_at_a_time(index: LexicalIndex) -> None:
    alone = [index.search(q, 5) for q in QUESTIONS * 4]
    with ThreadPoolExecutor(max_workers=4) as pool:
        together = list(pool.map(lambda q: index.search(q, 5), QUESTIONS * 4))
    for (rows_a, scores_a), (rows_b, scores_b) in zip(alone, together):
        assert rows_a.tolist() == rows_b.tolist()
        np.testing.assert_array_equal(scores_a, scores_b)


def test_coverage_is_the_share_of_idf_mass_present(index: LexicalIndex) -> None:
    full, partial, none = index.coverage("cocaine purity", [2, 0, 3])
    assert full == pytest.approx(1.0) and none == 0.0 and partial == 0.0
    half = index.coverage("cocaine zebras", [2])[0]  # an unknown word weighs as the rarest possible term
    assert 0.0 < half < 0.5


def test_empty_corpus_and_corpus_without_words(tmp_path: Path) -> None:
    empty = LexicalIndex.build([], tmp_path / "empty")
    assert empty.count == 0 and not len(empty.search("anything", 5)[0])
    wordless = LexicalIndex.build(["a b c", ""], tmp_path / "wordless")
    assert not len(wordless.search("cocaine", 5)[0])


def test_a_character_file_cut_short_after_opening_is_an_error_not_a_wrong_answer(tmp_path: Path) -> None:
    index = LexicalIndex.build(TEXTS, tmp_path / "bm25")
    assert len(index.search("cocaine purity", 5)[0])
    os.truncate(tmp_path / "bm25" / CharView.TOKENS, 10)
    with pytest.raises(OSError, match="short read"):
        index.search("cocaine purity", 5)


def test_an_index_of_the_older_character_layout_is_refused_with_a_rebuild_message(tmp_path: Path) -> None:
    LexicalIndex.build(TEXTS, tmp_path / "bm25")
    (tmp_path / "bm25" / CharView.META).unlink()
    with pytest.raises(IndexMismatch, match="rebuild"):
        LexicalIndex(tmp_path / "bm25")
