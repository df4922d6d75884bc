"""Stage 5: question -> ranked, de-duplicated hits, with the decision to answer or abstain.

Dense (FAISS) and lexical (BM25) candidates are fused by a convex combination of normalised
scores (Bruch, Gai and Ingber, "An Analysis of Fusion Functions for Hybrid Retrieval", TOIS 2023):
`fusion_weight` x lexical score / best lexical score + (1 - fusion_weight) x the cosine min-max
normalised over the dense candidates. Every candidate of either side gets its exact cosine (a
lexical candidate's windows are scored directly), so a passage is never ranked on one side only.
The weight was chosen on the dev sets (benchmarks/fusion.py); measured there, it beats reciprocal
rank fusion, which threw away the score gaps. Optionally a cross-encoder re-ranks the best, and
overlapping passages of the same document are collapsed to the best one.

Abstention uses two scores that mean the same on every corpus: a passage's cosine similarity
to the question (its best window's), and its term match: each of the question's content words
is matched to the passage's word nearest in meaning (the word itself scores 1, "biggest" for
"largest" nearly as much), the cosines averaged with the words' IDF weights. A question is
answered when one passage shown has cosine + coverage_weight x term match >= min_dense_score
(calibrated on half of tests/data/abstention.jsonl by benchmarks/abstention.py, reported on the
other half). Without a model the rule is coverage >= min_relevance, coverage being the share of
the question's IDF-weighted stems the passage contains.
"""

from __future__ import annotations

import copy
import re
import threading
import unicodedata
from collections.abc import Callable, Hashable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING

import numpy as np

from threatqa.chunking import Chunk
from threatqa.dense import DensePart, term_match
from threatqa.embeddings import Embedder
from threatqa.index import Index
from threatqa.lexical import content_words, word_tokens
from threatqa.lexical_subset import Statistics

if TYPE_CHECKING:
    from sentence_transformers import CrossEncoder

RERANK_POOL = 20  # fused candidates the cross-encoder sees

# The lexical side of a question, and its words for term matching, run on this pool while the dense
# side (embedding + FAISS, both outside the GIL) runs on the caller's thread: the dense side is usually
# the longer, so it starts at once and its end wakes nobody. Shared by all retrievers of the process.
_LEXICAL_POOL = ThreadPoolExecutor(max_workers=4, thread_name_prefix="threatqa-lexical")

_CONTROL = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f\u200b-\u200f\u202a-\u202e\u2066-\u2069\ufeff]")


@dataclass(frozen=True)
class Hit:
    """A retrieved passage and the scores that placed it."""

    chunk: Chunk
    rank: int
    score: float  # the final ranking score (fused, lexical or cross-encoder, depending on mode)
    relevance: float  # share of the question's weighted terms found in the passage, 0..1
    lexical_score: float | None
    dense_score: float | None  # cosine similarity
    rerank_score: float | None = None
    term_match: float | None = None  # how well its words match the question's (dense.term_match), when needed


@dataclass(frozen=True)
class Retrieval:
    """The outcome of one search."""

    question: str  # as searched (cleaned, possibly truncated)
    hits: tuple[Hit, ...]
    answered: bool
    mode: str
    notices: tuple[str, ...] = ()


@dataclass
class _Read:
    """What one search has read so far, by row: passages from the store, and their coverage."""

    passages: dict[int, Chunk] = field(default_factory=dict)
    coverage: dict[int, float] = field(default_factory=dict)
    subset: Statistics | None = None  # the readable passages' statistics, under a need-to-know policy

    def chunks(self, index: Index, rows: list[int]) -> list[Chunk]:
        missing = [row for row in rows if row not in self.passages]
        self.passages.update(zip(missing, index.chunks(missing)))
        return [self.passages[row] for row in rows]

    def covered(self, index: Index, question: str, rows: list[int]) -> list[float]:
        missing = [row for row in rows if row not in self.coverage]
        self.coverage.update(zip(missing, index.lexical.coverage(question, missing, self.subset)))
        return [self.coverage[row] for row in rows]

    def prefetch(self, index: Index, question: str, rows: list[int]) -> None:
        self.chunks(index, rows)
        self.covered(index, question, rows)

    def update(self, other: _Read) -> None:
        self.passages.update(other.passages)
        self.coverage.update(other.coverage)


@dataclass(frozen=True)
class _Words:
    """A question's content words for term matching: their vectors and IDF weights."""

    vectors: np.ndarray
    weights: np.ndarray


def clean_question(question: str, max_chars: int) -> tuple[str, list[str]]:
    """Normalise a question for search; returns it with notices about what was changed."""
    notices = []
    text = unicodedata.normalize("NFC", question.encode("utf-8", "replace").decode("utf-8"))
    text = " ".join(_CONTROL.sub(" ", text).split())
    if len(text) > max_chars:
        text = text[:max_chars].rsplit(" ", 1)[0] or text[:max_chars]
        notices.append(f"question truncated to its first {len(text)} characters (limit {max_chars})")
    return text, notices


class Retriever:
    """Searches one opened index with the models that are available."""

    def __init__(
        self,
        index: Index,
        embedder: Embedder | None = None,
        reranker: CrossEncoder | None = None,
        candidates: int = 50,
        min_relevance: float = 0.3,
        min_dense_score: float = 0.55,
        max_question_chars: int = 2000,
        fusion_weight: float = 0.5,
        coverage_weight: float = 0.5,
    ) -> None:
        self.index = index
        self.embedder = embedder if index.has_dense else None
        self.reranker = reranker
        self.candidates = candidates
        self.min_relevance = min_relevance
        self.min_dense_score = min_dense_score
        self.max_question_chars = max_question_chars
        self.fusion_weight = fusion_weight  # 1: lexical only, 0: dense only
        self.coverage_weight = coverage_weight

    def with_weight(self, fusion_weight: float) -> Retriever:
        """The same retriever with another fusion weight (1: lexical only, 0: dense only)."""
        other = copy.copy(self)
        other.fusion_weight = fusion_weight
        return other

    @property
    def mode(self) -> str:
        if self.embedder is None or self.fusion_weight >= 1:
            mode = "lexical"
        else:
            mode = "dense" if self.fusion_weight <= 0 else "hybrid"
        return mode + ("+rerank" if self.reranker is not None else "")

    def mask(self, documents: list[str]) -> np.ndarray:
        """The passage rows of these documents (ids or paths), as a mask."""
        mask = np.zeros(len(self.index), dtype=bool)
        for start in range(0, len(documents), 500):  # SQLite binds a limited number of parameters
            mask[self.index.rows_for_documents(documents[start : start + 500])] = True
        return mask

    def subset(self, documents: list[str]) -> Statistics:
        """The passages of these documents (ids or paths) with their own BM25 statistics: given to
        `search`, it answers exactly as an index of those documents alone would (need-to-know access)."""
        return self.index.lexical.statistics(self.mask(documents))

    def search(
        self,
        question: str,
        k: int = 5,
        documents: list[str] | None = None,
        subset: Statistics | None = None,
        distinct: Callable[[Chunk], Hashable] | None = None,
    ) -> Retrieval:
        """Top-k passages for a question, optionally restricted to some documents (ids or paths), and
        to a subset of the index (`subset`: the documents a user may read), searched as if the index
        held only the subset's passages: rows, scores and abstention are that index's. With `distinct`
        (a passage's key: copies of one text share it), k distinct keys, with the copies among them
        as hits too."""
        text, notices = clean_question(question, self.max_question_chars)
        if not text:
            return Retrieval(text, (), False, self.mode, (*notices, "the question is empty"))
        mask, parts = (self.mask(documents) if documents else None), None
        if subset is not None:
            if not subset.count:
                return Retrieval(text, (), False, self.mode, (*notices, "there are no documents you may read"))
            if subset.count < len(self.index):  # everything readable: no filter for FAISS to apply
                parts = subset.windows if mask is None else None  # the readable set's own dense filter
                mask = subset.mask if mask is None else mask & subset.mask
        if mask is not None and not mask.any():
            return Retrieval(text, (), False, self.mode, (*notices, "none of the chosen documents is indexed"))
        pool, read = max(self.candidates, k * 4), _Read(subset=subset)
        mode = self.mode.split("+")[0]
        empty = np.zeros(0, dtype=np.int64), np.zeros(0, dtype=np.float32)
        vector, words = None, None
        if mode != "lexical" and self.index.dense.terms is not None:  # type: ignore[union-attr]
            # the question's words for term matching (`_matched`), made beside the search: with words unknown
            # to the corpus, it is a second run of the model
            words = _LEXICAL_POOL.submit(self._words, text, subset)
        if mode == "lexical":
            lex_rows, lex_scores = self.index.lexical.search(text, pool, mask, subset)
            dense_rows, dense_scores = empty
        elif mode == "dense":
            lex_rows, lex_scores = empty
            vector, (dense_rows, dense_scores) = self._dense(text, pool, mask, parts)
        else:
            # whichever side finishes first reads its best passages while the other runs: most answers
            # are among them
            dense_done = threading.Event()
            lexical = _LEXICAL_POOL.submit(self._lexical, text, pool, mask, 2 * k, dense_done, subset)
            try:
                vector, (dense_rows, dense_scores) = self._dense(text, pool, mask, parts)
                dense_done.set()  # now, not after the reading below: the lexical side need not read too
                if not lexical.done():
                    read.prefetch(self.index, text, dense_rows[: 2 * k].tolist())
            finally:
                dense_done.set()
                lex_rows, lex_scores, lexical_read = lexical.result()
            read.update(lexical_read)
        if not len(lex_rows) and not len(dense_rows):
            no_words = not word_tokens(text)
            notices.append("no searchable words in the question (only stopwords or symbols)" if no_words
                           else "no passage shares a word with the question")  # fmt: skip
            return Retrieval(text, (), False, self.mode, tuple(notices))
        cosines = dict(zip(dense_rows.tolist(), dense_scores.tolist()))
        if vector is not None and mode == "hybrid":  # the exact cosine of lexical candidates the dense side missed
            missing = [row for row in lex_rows.tolist() if row not in cosines]
            cosines.update(zip(missing, self.index.dense.scores(vector, missing).tolist()))  # type: ignore[union-attr]
        lexical = dict(zip(lex_rows.tolist(), lex_scores.tolist()))
        weight = self.fusion_weight if mode == "hybrid" else float(mode == "lexical")
        hits = self._collect(text, fuse(lexical, cosines, dense_scores, weight), lexical, cosines, k, read, distinct)
        if words is not None:
            hits = self._matched(words, hits)
        return Retrieval(text, tuple(hits), self._answered(hits), self.mode, tuple(notices))

    def _lexical(
        self,
        text: str,
        pool: int,
        mask: np.ndarray | None,
        best: int,
        dense_done: threading.Event,
        subset: Statistics | None = None,
    ) -> tuple[np.ndarray, np.ndarray, _Read]:
        """Lexical rows and scores, with the best rows' passages read when the dense side is still running."""
        rows, scores = self.index.lexical.search(text, pool, mask, subset)
        read = _Read(subset=subset)
        if not dense_done.is_set():
            read.prefetch(self.index, text, rows[:best].tolist())
        return rows, scores, read

    def _dense(
        self, text: str, pool: int, mask: np.ndarray | None, parts: tuple[DensePart, ...] | None = None
    ) -> tuple[np.ndarray, tuple[np.ndarray, np.ndarray]]:
        """The question's vector, and the rows and cosines of its best passages (mask's; `parts`: the
        same passages as labels' dense parts)."""
        vector = self.embedder.encode_query(text)  # type: ignore[union-attr]
        return vector, self.index.dense.search(vector, pool, mask, parts)  # type: ignore[union-attr]

    def _words(self, text: str, subset: Statistics | None = None) -> _Words | None:
        """The question's content words' vectors and weights (IDF over the subset's passages, when
        given): read from the index, those unknown to the corpus embedded in one call, apart from the
        question's own (embedded with it, the words were padded to its length: the call took 1.5x the
        question's alone at p50 and 2.5x at p95; benchmarks/query.py, issue 17)."""
        terms = self.index.dense.terms  # type: ignore[union-attr]
        words = content_words(text) if terms is not None else []
        if terms is None or not words:
            return None
        unknown = [w for w in words if w not in terms.position]
        known = [w for w in words if w in terms.position]
        vectors = terms.vectors[:0]
        if unknown:
            vectors = self.embedder.encode_words(unknown)  # type: ignore[union-attr]
        weights = self.index.lexical.word_weights(known + unknown, subset)
        return _Words(np.vstack([terms.of(known), vectors]), weights)

    def _collect(
        self,
        text: str,
        ranked: list[tuple[int, float]],
        lexical: dict[int, float],
        dense: dict[int, float],
        k: int,
        read: _Read,
        distinct: Callable[[Chunk], Hashable] | None = None,
    ) -> list[Hit]:
        """Re-rank (when configured), drop passages overlapping a better one, keep k (k distinct keys)."""
        rerank: dict[int, float] = {}
        if self.reranker is not None:
            pool = list(zip(ranked[:RERANK_POOL], read.chunks(self.index, [row for row, _ in ranked[:RERANK_POOL]])))
            scores = self.reranker.predict([(text, chunk.text) for _, chunk in pool], show_progress_bar=False)
            rerank = {row: float(s) for ((row, _), _), s in zip(pool, scores)}
            ranked = sorted(ranked[:RERANK_POOL], key=lambda item: -rerank[item[0]]) + ranked[RERANK_POOL:]
        chosen: list[tuple[int, float, Chunk]] = []
        keys: set[Hashable] = set()
        batch = 2 * k  # passages are read from the store a batch at a time, as far as the overlaps need
        for start in range(0, len(ranked), batch):
            part = ranked[start : start + batch]
            for (row, score), chunk in zip(part, read.chunks(self.index, [row for row, _ in part])):
                if any(c.doc_id == chunk.doc_id and c.start < chunk.end and chunk.start < c.end for *_, c in chosen):
                    continue
                chosen.append((row, rerank.get(row, score), chunk))
                keys.add(distinct(chunk) if distinct is not None else row)
                if len(keys) == k:
                    break
            if len(keys) == k:
                break
        coverage = read.covered(self.index, text, [row for row, _, _ in chosen])
        return [
            Hit(chunk, rank, float(score), float(cov), lexical.get(row), dense.get(row), rerank.get(row))
            for rank, ((row, score, chunk), cov) in enumerate(zip(chosen, coverage), start=1)
        ]

    def _matched(self, words: Future[_Words | None], hits: list[Hit]) -> list[Hit]:
        """Hits with their term match where the abstention rule needs it: not when a cosine alone
        answers, nor for a passage that no term match could carry over the line."""
        if any(h.dense_score is not None and h.dense_score >= self.min_dense_score for h in hits):
            return hits
        needed = [
            i for i, h in enumerate(hits) if (h.dense_score or 0.0) + self.coverage_weight >= self.min_dense_score
        ]
        vectors = words.result() if needed else None
        if vectors is None:
            return hits
        for i in needed:
            hits[i] = replace(hits[i], term_match=self._term_match(vectors, hits[i].chunk))
        return hits

    def _term_match(self, words: _Words, chunk: Chunk) -> float:
        terms = self.index.dense.terms  # type: ignore[union-attr]
        return term_match(words.vectors, words.weights, terms.of(content_words(chunk.text)))  # type: ignore[union-attr]

    def term_matches(self, text: str, chunks: list[Chunk]) -> list[float]:
        """For each passage, how well its words match the question's (synonyms included), 0..1."""
        if self.embedder is None or self.index.dense is None or self.index.dense.terms is None:
            return [0.0] * len(chunks)
        words = self._words(text)
        return [self._term_match(words, chunk) if words is not None else 0.0 for chunk in chunks]

    def _answered(self, hits: list[Hit]) -> bool:
        if any(h.dense_score is not None for h in hits):
            scores = [(h.dense_score, h.term_match or 0.0) for h in hits]
        else:
            scores = [(None, h.relevance) for h in hits]
        return answers(scores, self.min_relevance, self.min_dense_score, self.coverage_weight)


def answers(
    scores: list[tuple[float | None, float]], min_relevance: float, min_dense_score: float, coverage_weight: float
) -> bool:
    """The abstention rule (module docstring) over the passages shown, as (cosine, term match)
    pairs: some passage has cosine + coverage_weight x term match >= min_dense_score; without
    cosines (lexical mode), as (None, coverage) pairs: some passage covers min_relevance."""
    if any(cosine is not None for cosine, _ in scores):
        return any((cosine or 0.0) + coverage_weight * match >= min_dense_score for cosine, match in scores)
    return any(coverage >= min_relevance for _, coverage in scores)


def fuse(
    lexical: dict[int, float], cosines: dict[int, float], dense_scores: np.ndarray, weight: float
) -> list[tuple[int, float]]:
    """Rows with their fused score, best first: weight x lexical / best lexical + (1 - weight) x
    cosine min-max normalised over the dense candidates (`dense_scores`); a row absent from the
    lexical side scores 0 there (BM25's own floor)."""
    best_lexical = max(lexical.values(), default=0.0) or 1.0
    low, high = (float(dense_scores.min()), float(dense_scores.max())) if len(dense_scores) else (0.0, 0.0)
    spread = high - low

    def dense(row: int) -> float:
        cosine = cosines.get(row)
        if cosine is None:
            return 0.0
        return (cosine - low) / spread if spread > 0 else 1.0

    rows = lexical.keys() | (cosines.keys() if weight < 1 else set())
    fused = {row: weight * lexical.get(row, 0.0) / best_lexical + (1 - weight) * dense(row) for row in rows}
    return sorted(fused.items(), key=lambda item: (-item[1], item[0]))
