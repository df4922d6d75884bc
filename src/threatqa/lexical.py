"""Lexical retrieval (part of the index stage): BM25 in a word view and a character n-gram view.

Measured on the SQuAD 2.0 subset (see `threatqa eval`), each part of the method adds accuracy
over plain BM25 on whole paragraphs:
- words are Snowball-stemmed with a broad stopword list, British -ise spellings folded to -ize;
- character 3-5-grams inside words catch spelling variants, compounds and partial matches;
- a passage scores its own BM25 plus half the BM25 of its best sentence, which rewards the
  question's terms appearing close together;
- the two views are combined after scaling each by its best score (CombSUM of max-normalised
  scores), which keeps each view's score gaps where rank fusion would flatten them.

Both views are BM25 (Lucene's variant) over sparse counts: scikit-learn's `CountVectorizer` with
our word analyzer, and the n-grams and hashes of its `HashingVectorizer` for characters (each
distinct word stemmed and hashed once). The word view is stored by term (CSC: one posting list
per stem, memory-mapped), so a question reads only the postings of its own terms, for passages
and sentences alike. The character view (`lexical_chars.py`) keeps each passage as its words'
ids and each distinct word's n-grams once, and works out the BM25 of the question's n-grams in
the word view's best candidates only, read with pread(2). Both are built a batch at a time, so
neither building nor serving holds a large corpus in memory.

A query's loops are compiled with numba and run outside the GIL (`_word_kernel`, `_char_kernel`):
the lexical side of a question runs beside the dense side on another thread, and in NumPy its many
array operations took and released the GIL so often that each side slowed the other.
"""

from __future__ import annotations

import functools
import json
import queue
import re
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import Stemmer
from bm25s.stopwords import STOPWORDS_EN
from numba import njit
from scipy import sparse
from sklearn.feature_extraction.text import ENGLISH_STOP_WORDS, CountVectorizer

from threatqa import arrays
from threatqa.chunking import Span, paragraphs, sentences
from threatqa.errors import IndexMismatch
from threatqa.lexical_bm25 import _TOKEN, K1, B, _idf, _mean, _segment_sums, _sum_by_passage
from threatqa.lexical_chars import CharView, CharWriter, _ngram_counts
from threatqa.lexical_subset import Part, Statistics, combine, parts

SENTENCE_WEIGHT = 0.5
CHAR_CANDIDATES = 200  # passages (best by the word view) that the character view re-scores
BATCH = 10_000  # texts vectorised at a time when building
_STOPWORDS = frozenset(STOPWORDS_EN) | frozenset(ENGLISH_STOP_WORDS)
_STEMMER = Stemmer.Stemmer("english")
_NO_MASK = np.zeros(0, dtype=bool)
# British -ise spellings to -ize before stemming (Snowball stems "organised" and "organized"
# differently); applied to documents and questions alike, so it can only merge variants.
_BRITISH_ISE = re.compile(r"^(\w{3,})is(e|ed|es|ing|er|ers|ation|ations)$")


def word_tokens(text: str) -> list[str]:
    """Lower-cased, stopword-free, spelling-normalised, Snowball-stemmed word tokens."""
    return [_stem(t) for t in _TOKEN.findall(text.lower()) if t not in _STOPWORDS]


def content_words(text: str) -> list[str]:
    """The distinct lower-cased words of a text that are not stopwords, in order of appearance
    (the vocabulary of the dense side's term matching)."""
    return list(dict.fromkeys(t for t in _TOKEN.findall(text.lower()) if t not in _STOPWORDS))


@functools.lru_cache(maxsize=1 << 18)
def _stem(word: str) -> str:
    """A lower-case word's stem, after folding British -ise spellings (each distinct word once)."""
    return _STEMMER.stemWord(_BRITISH_ISE.sub(r"\1iz\2", word))


def _scaled(scores: np.ndarray) -> np.ndarray:
    """Scores divided by the best one (all zero when none is positive)."""
    top = scores.max(initial=0.0)
    return scores / top if top > 0 else np.zeros(len(scores))


# ----------------------------------------------------------------------------- query-time kernels
# The loops of a query, compiled (numba) and run outside the GIL: the lexical side of a question
# runs beside the dense side (embedding + FAISS) on another thread, and in NumPy it held the GIL
# between its many array operations, slowing both sides. Each reads only what the query touches.


@njit(nogil=True, cache=True)
def _word_kernel(terms, starts, sentence_rows, counts, owners, idf, lengths, means, mask, keep):
    """The word view's scores (passage BM25 + SENTENCE_WEIGHT x its best sentence's) of the passages
    that have one of the terms (a term given twice counts twice), only those where mask is True when
    mask is not empty; the best `keep` of them (ties to the lower row), in row order.

    The postings are the terms' sentences (ascending) with the term's count there, and owners[j]
    the passage of posting j; idf holds each term's IDF over passages and over sentences, lengths
    the sentences' and the passages' lengths in words, means their means. A passage's count is the
    sum over its sentences, whose postings are adjacent.

    Passage at a time (MaxScore): the terms' postings are merged by passage, each passage scored
    whole and offered to a heap of the best `keep`. A term's part of any passage's score is below
    its IDFs (a BM25 weight is below 1), so once the heap is full, the terms whose bounds together
    stay below its worst score cannot carry a passage into it alone: only passages with one of the
    other terms are visited, and those terms' postings are skipped to them. Nothing of corpus size
    is written, and the scores are those of summing term by term (the same operations, in the
    terms' order)."""
    sentence_lengths, passage_lengths = lengths
    base = K1 * (1 - B)
    per_sentence, per_passage = K1 * B / max(means[0], 1e-9), K1 * B / max(means[1], 1e-9)
    n = len(terms)
    at, ends, runs, merge = np.empty(n, np.int64), np.empty(n, np.int64), np.empty(n, np.int64), np.empty(n, np.int64)
    bound = np.empty(n)
    postings = 0
    for i in range(n):
        at[i], ends[i] = starts[terms[i]], starts[terms[i] + 1]
        postings += ends[i] - at[i]
        # above any part of a score the term can give (float32 sums round: a margin)
        bound[i] = (np.float64(idf[terms[i], 0]) + SENTENCE_WEIGHT * np.float64(idf[terms[i], 1])) * (1 + 1e-5) + 1e-9
    order = np.argsort(bound)  # the terms by bound, smallest first: the first `skipped` only probed
    capacity = min(keep, postings)
    if capacity <= 0:
        return np.empty(0, np.int64), np.empty(0)
    heap_scores, heap_rows = np.empty(capacity), np.empty(capacity, np.int64)
    size, skipped, floor = 0, 0, -1.0  # floor: the heap's worst score, once it is full
    while True:
        row = -1
        for m in range(skipped, n):
            i = order[m]
            if at[i] < ends[i] and (row < 0 or owners[at[i]] < row):
                row = owners[at[i]]
        if row < 0:
            break
        for m in range(skipped):  # the probed terms' postings, skipped to this passage
            i = order[m]
            at[i] = _seek(owners, at[i], ends[i], row)
        length = passage_lengths[row]
        passage = np.float32(0.0)
        for i in range(n):  # the passage's part: its counts summed over its sentences, term by term
            j = at[i]
            tf = 0.0
            while j < ends[i] and owners[j] == row:
                tf += counts[j]
                j += 1
            runs[i] = j
            if j > at[i]:
                passage += idf[terms[i], 0] * np.float32(tf / (tf + base + per_passage * length))
        best = np.float32(0.0)
        for i in range(n):
            merge[i] = at[i]
        while True:  # its sentences, merged across the terms: each sentence's BM25, the best kept
            sentence = -1
            for i in range(n):
                if merge[i] < runs[i] and (sentence < 0 or sentence_rows[merge[i]] < sentence):
                    sentence = sentence_rows[merge[i]]
            if sentence < 0:
                break
            total = np.float32(0.0)
            norm = base + per_sentence * sentence_lengths[sentence]
            for i in range(n):  # in the terms' order, as a sum over them is
                if merge[i] < runs[i] and sentence_rows[merge[i]] == sentence:
                    tf = np.float64(counts[merge[i]])
                    total += idf[terms[i], 1] * np.float32(tf / (tf + norm))
                    merge[i] += 1
            best = max(best, total)
        for i in range(n):
            at[i] = runs[i]
        if len(mask) and not mask[row]:
            continue
        score = np.float64(passage) + SENTENCE_WEIGHT * np.float64(best)
        if size < capacity:
            heap_scores[size], heap_rows[size] = score, row
            _sift_up(heap_scores, heap_rows, size)
            size += 1
        elif score > heap_scores[0]:  # a later row never wins a tie: rows come in ascending order
            heap_scores[0], heap_rows[0] = score, row
            _sift_down(heap_scores, heap_rows, size)
        else:
            continue
        if size == capacity and heap_scores[0] > floor:
            floor = heap_scores[0]
            total_bound = 0.0
            skipped = 0
            while skipped < n and total_bound + bound[order[skipped]] < floor:
                total_bound += bound[order[skipped]]
                skipped += 1
    rows, scores = heap_rows[:size], heap_scores[:size]
    in_order = np.argsort(rows)
    return rows[in_order], scores[in_order]


@njit(nogil=True, cache=True)
def _seek(owners, j, end, row):
    """The first posting in [j, end) of passage `row` or after (owners ascending there): galloping,
    then binary search."""
    step = 1
    while j + step < end and owners[j + step] < row:
        j += step
        step *= 2
    if j >= end or owners[j] >= row:
        return j
    lo, hi = j + 1, min(j + step, end)  # owners[lo - 1] < row; owners[hi] >= row or hi == end
    while lo < hi:
        mid = (lo + hi) // 2
        if owners[mid] < row:
            lo = mid + 1
        else:
            hi = mid
    return lo


@njit(nogil=True, cache=True)
def _worse(scores, rows, a, b):
    """Whether heap entry a ranks below b: a lower score, or the same score and a later row."""
    return scores[a] < scores[b] or (scores[a] == scores[b] and rows[a] > rows[b])


@njit(nogil=True, cache=True)
def _sift_up(scores, rows, i):
    while i > 0:
        parent = (i - 1) // 2
        if not _worse(scores, rows, i, parent):
            break
        scores[i], scores[parent] = scores[parent], scores[i]
        rows[i], rows[parent] = rows[parent], rows[i]
        i = parent


@njit(nogil=True, cache=True)
def _sift_down(scores, rows, size):
    i = 0
    while True:
        low, left, right = i, 2 * i + 1, 2 * i + 2
        if left < size and _worse(scores, rows, left, low):
            low = left
        if right < size and _worse(scores, rows, right, low):
            low = right
        if low == i:
            break
        scores[i], scores[low] = scores[low], scores[i]
        rows[i], rows[low] = rows[low], rows[i]
        i = low


@njit(nogil=True, cache=True)
def _contains(starts, sentence_rows, terms, firsts, lasts):
    """found[i, j]: whether the passage of sentences firsts[j] .. lasts[j] - 1 has term terms[i]
    (a term below 0 is in none)."""
    found = np.zeros((len(terms), len(firsts)))
    for i in range(len(terms)):
        if terms[i] < 0:
            continue
        postings = sentence_rows[starts[terms[i]] : starts[terms[i] + 1]]
        for j in range(len(firsts)):
            at = np.searchsorted(postings, firsts[j])
            found[i, j] = at < len(postings) and postings[at] < lasts[j]
    return found


@dataclass(frozen=True)
class WordView:
    """Word stems by sentence, stored by stem: each stem's sentences (ascending) and its count in
    each; BM25 weights are worked out at query time from the counts and lengths kept beside them
    (5 bytes a posting where a weight for passages and one for sentences took 16)."""

    FILES = ("indptr", "sentences", "counts", "df", "sentence-lengths", "passage-lengths")

    indptr: np.ndarray  # int64, stems + 1: stem t's postings are [indptr[t], indptr[t + 1])
    sentences: np.ndarray  # int32 sentence row per posting, ascending within a stem
    counts: np.ndarray  # uint8 (uint16 when a count needs it): the stem's count in the sentence
    df: np.ndarray  # int64, per stem: the passages that have it
    sentence_lengths: np.ndarray  # float32, words per sentence (stems counted, stopwords not)
    passage_lengths: np.ndarray  # float32, words per passage

    @classmethod
    def from_counts(cls, counts: sparse.csr_matrix, per_passage: np.ndarray) -> WordView:
        """The view of a (sentences x stems) count matrix whose passages have per_passage sentences each."""
        lengths = np.asarray(counts.sum(axis=1), dtype=np.float32).ravel()
        df = np.bincount(_sum_by_passage(counts, per_passage).indices, minlength=counts.shape[1])
        by_stem = counts.tocsc()
        by_stem.sort_indices()
        top = int(by_stem.data.max(initial=0))
        return cls(by_stem.indptr.astype(np.int64), by_stem.indices.astype(np.int32),
                   by_stem.data.astype(np.uint8 if top <= 255 else np.uint16), df.astype(np.int64), lengths,
                   _segment_sums(lengths, per_passage).astype(np.float32))  # fmt: skip

    def save(self, folder: Path) -> None:
        for name in self.FILES:
            arrays.save(folder / f"word-{name}.npy", getattr(self, name.replace("-", "_")))

    @classmethod
    def load(cls, folder: Path) -> WordView:
        return cls(*(arrays.load(folder / f"word-{name}.npy") for name in cls.FILES))

    def idf(self) -> np.ndarray:
        """Each stem's IDF over passages and over sentences (float32, stems x 2)."""
        passages, sentences = len(self.passage_lengths), len(self.sentence_lengths)
        return np.stack([_idf(self.df, passages), _idf(np.diff(self.indptr), sentences)], axis=1).astype(np.float32)


@dataclass(frozen=True)
class _Scratch:
    """A zeroed array the character view marks where it reads, reused from query to query and zeroed
    again where written."""

    reads: np.ndarray  # uint8, as many bytes as the largest passage has: where the character view reads

    @classmethod
    def create(cls, largest: int) -> _Scratch:
        return cls(np.zeros(largest, np.uint8))


def _sentences(texts: Iterable[str], counts: np.ndarray | None = None) -> Iterator[str]:
    """Each text's sentences in order (the whole text when it has none); counts[i] gets text i's number."""
    for i, text in enumerate(texts):
        spans = [s for p in paragraphs(text) for s in sentences(text, p)] or [Span(0, len(text))]
        if counts is not None:
            counts[i] = len(spans)
        yield from (text[s.start : s.end] for s in spans)


class LexicalIndex:
    """BM25 over passages and their sentences (stemmed words), re-scored with character n-grams.

    The word view finds every passage that shares a stem with the question; the character view
    then scores the best `CHAR_CANDIDATES` of them, which is where it changes the order."""

    META = "lexical.json"

    def __init__(self, folder: Path) -> None:
        """Opens a built index (arrays memory-mapped)."""
        if not (folder / CharView.META).is_file():  # the character view of index schema 5 and before
            raise IndexMismatch(f"{folder} holds a lexical index of an older layout; rebuild with `threatqa index`")
        meta = json.loads((folder / self.META).read_text())
        self.count = int(meta["count"])
        self.vocabulary: dict[str, int] = meta["vocabulary"]
        self.words = WordView.load(folder)
        self.idf = self.words.idf()  # in memory: stems x 2 floats
        self.lengths = self.words.sentence_lengths, self.words.passage_lengths
        self.means = np.array([_mean(lengths) for lengths in self.lengths])
        self.sentence_starts = arrays.load(folder / "sentence_starts.npy")  # each passage's first sentence
        self.sentence_ends = np.append(self.sentence_starts[1:], int(meta["sentences"]))
        self.chars = CharView.load(folder)
        self.largest = self.chars.largest(self.sentence_starts, self.sentence_ends)
        owner = np.repeat(np.arange(self.count, dtype=np.int32), self.sentence_ends - self.sentence_starts)
        # the passage of each sentence posting, read in order at query time (4 bytes a posting, in memory)
        self.posting_owner = owner[self.words.sentences]
        self._free: queue.SimpleQueue[_Scratch] = queue.SimpleQueue()

    @classmethod
    def build(cls, texts: list[str], folder: Path) -> LexicalIndex:
        """Builds the index of the texts into folder (created) and opens it."""
        folder.mkdir(parents=True, exist_ok=True)
        per_passage = np.zeros(len(texts), dtype=np.int64)
        vectorizer = CountVectorizer(analyzer=word_tokens, dtype=np.float32)
        try:
            sentence_counts = vectorizer.fit_transform(_sentences(texts, per_passage))
        except ValueError:  # no text has a searchable word (an empty vocabulary)
            vectorizer = CountVectorizer(analyzer=word_tokens, dtype=np.float32, vocabulary=["\x00"])
            sentence_counts = vectorizer.transform(_sentences(texts, per_passage))
        WordView.from_counts(sentence_counts, per_passage).save(folder)
        del sentence_counts
        chars = CharWriter(folder)
        for first in range(0, len(texts), BATCH):
            chars.add(list(_sentences(texts[first : first + BATCH])), per_passage[first : first + BATCH])
        chars.finish()
        arrays.save(folder / "sentence_starts.npy", (np.cumsum(per_passage) - per_passage).astype(np.int64))
        vocabulary = {term: int(column) for term, column in vectorizer.vocabulary_.items()}
        meta = {"count": len(texts), "sentences": int(per_passage.sum()), "vocabulary": vocabulary}
        (folder / cls.META).write_text(json.dumps(meta))
        index = cls(folder)
        index.warm_up()  # the first build after an install compiles the query loops, not the first start
        return index

    def terms(self, question: str | list[str]) -> np.ndarray:
        """Column ids of the question's stems (or of these stems) that the index knows; repeats kept,
        they weigh twice."""
        stems = word_tokens(question) if isinstance(question, str) else question
        return np.array([self.vocabulary[t] for t in stems if t in self.vocabulary], dtype=np.int64)

    def parts(self, masks: list[np.ndarray]) -> list[Part]:
        """The BM25 counts of each of these disjoint sets of passages (lexical_subset.py), in one pass."""
        counter = self.chars.counter(self.sentence_starts, self.sentence_ends)
        return parts([np.asarray(m, dtype=bool) for m in masks], self.words.indptr, self.posting_owner, counter)

    def combine(self, chosen: list[Part]) -> Statistics:
        """BM25 statistics of the union of some parts' passages, as an index of them alone would hold
        them: a search with them scores exactly as that index would."""
        per_passage, stems = self.sentence_ends - self.sentence_starts, len(self.words.indptr) - 1
        return combine(chosen, self.count, stems, len(self.chars.ngrams), self.lengths, per_passage)

    def statistics(self, mask: np.ndarray) -> Statistics:
        """BM25 statistics of the passages where mask is True (one part)."""
        return self.combine(self.parts([mask]))

    def search(
        self, question: str, k: int, mask: np.ndarray | None = None, subset: Statistics | None = None
    ) -> tuple[np.ndarray, np.ndarray]:
        """The k best passage rows and their scores (only rows where mask is True, if given). With a
        subset's statistics, only its passages are searched (and mask's, if given), scored as in an
        index of its passages alone.

        A question of stopwords only has nothing to search for, even though its character
        n-grams would match almost every passage."""
        stems = word_tokens(question)
        if subset is not None:
            mask = subset.mask if mask is None else mask & subset.mask
        if not self.count or not stems or (subset is not None and not subset.count):
            return np.zeros(0, dtype=np.int64), np.zeros(0, dtype=np.float32)
        scratch = self._take_scratch()
        result = self._search(question, self.terms(stems), k, mask, scratch, subset)
        self._free.put(scratch)  # only after a completed search, which leaves it zeroed again
        return result

    def _search(
        self,
        question: str,
        terms: np.ndarray,
        k: int,
        mask: np.ndarray | None,
        scratch: _Scratch,
        subset: Statistics | None = None,
    ) -> tuple[np.ndarray, np.ndarray]:
        rows, word = self._word_scores(terms, mask, max(k, CHAR_CANDIDATES), subset)
        if len(rows) < k and (self.count if subset is None else subset.count) <= CHAR_CANDIDATES * 10:
            # too few passages share a word with the question: in a small index, let the character
            # view find the nearest ones (partial words), so there is something to show
            allowed = np.flatnonzero(mask) if mask is not None else np.arange(self.count)
            extra = np.setdiff1d(allowed[: CHAR_CANDIDATES * 10], rows)
            rows, word = np.concatenate((rows, extra)), np.concatenate((word, np.zeros(len(extra))))
            order = np.argsort(rows)
            rows, word = rows[order], word[order]
        if not len(rows):
            return np.zeros(0, dtype=np.int64), np.zeros(0, dtype=np.float32)
        chars = None if subset is None else subset.chars
        passage, sentence = self.chars.scores(
            _ngram_counts(question), self.sentence_starts[rows], self.sentence_ends[rows], scratch.reads, chars
        )
        combined = _scaled(word) + _scaled(passage + SENTENCE_WEIGHT * sentence)
        keep = combined > 0
        rows, combined = rows[keep], combined[keep]
        order = np.lexsort((rows, -combined))[:k]  # best first; ties by row for determinism
        return rows[order].astype(np.int64), combined[order].astype(np.float32)

    def warm_up(self) -> None:
        """A search and a coverage of one of the index's words: the compiled query loops are loaded
        (or compiled, the first time after an install: seconds) before the first question needs them."""
        word = next(iter(self.vocabulary), "")
        self.coverage(word, [0] if self.count else [])
        self.search(word, 1)

    def _take_scratch(self) -> _Scratch:
        try:
            return self._free.get_nowait()
        except queue.Empty:  # as many sets as questions ever searched at once
            return _Scratch.create(self.largest)

    def _word_scores(
        self,
        terms: np.ndarray,
        mask: np.ndarray | None = None,
        keep: int | None = None,
        subset: Statistics | None = None,
    ) -> tuple[np.ndarray, np.ndarray]:
        """Rows sharing a stem with the question (only where mask is True, if given) and their word-view
        score, BM25 + half the best sentence's; the best `keep` of them (ties to the lower row), in row order."""
        words = self.words
        idf, means = (self.idf, self.means) if subset is None else (subset.idf, subset.means)
        return _word_kernel(  # type: ignore[no-any-return]
            terms, words.indptr, words.sentences, words.counts, self.posting_owner, idf, self.lengths,
            means, _NO_MASK if mask is None else mask,
            self.count if keep is None else keep,
        )  # fmt: skip

    def word_weights(self, words: list[str], subset: Statistics | None = None) -> np.ndarray:
        """The IDF of each word's stem over the passages (a subset's, when given); a word the index does
        not know weighs as much as the rarest possible term (as in `coverage`)."""
        columns = np.array([self.vocabulary.get(_stem(w), -1) for w in words], dtype=np.int64)
        return _idf(self._df(columns, subset), self.count if subset is None else subset.count)

    def _df(self, columns: np.ndarray, subset: Statistics | None = None) -> np.ndarray:
        """The passages (a subset's, when given) that have each stem column (0 for a column below 0: a
        stem the index lacks)."""
        df = self.words.df if subset is None else subset.df
        return np.where(columns >= 0, df[np.maximum(columns, 0)] if len(df) else 0, 0)

    def coverage(self, question: str, rows: list[int], subset: Statistics | None = None) -> list[float]:
        """For each passage row: the share of the question's IDF mass (distinct word stems) it contains.

        Terms unknown to the index weigh as much as the rarest possible term, so a question about
        something the documents never mention scores near zero. With a subset's statistics, the
        weights are those of an index of its passages alone."""
        stems = list(dict.fromkeys(word_tokens(question)))
        if not stems:
            return [0.0] * len(rows)
        columns = np.array([self.vocabulary.get(stem, -1) for stem in stems], dtype=np.int64)
        weights = _idf(self._df(columns, subset), self.count if subset is None else subset.count)
        rows_ = np.asarray(rows, dtype=np.int64)
        found = _contains(self.words.indptr, self.words.sentences, columns, self.sentence_starts[rows_],
                          self.sentence_ends[rows_])  # fmt: skip
        return (weights @ found / weights.sum()).tolist()
