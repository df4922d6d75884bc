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
and sentences alike. The character view, ten times larger, is stored by sentence, with each
n-gram's weight in the sentence and its share of the passage's, and read with pread(2) for the
word view's best candidates only. Both are built a batch at a time, so neither building nor
serving holds a large corpus in memory.

A query's loops are compiled with numba and run outside the GIL (`_word_kernel`, `_char_kernel`):
the lexical side of a question runs beside the dense side on another thread, and in NumPy its many
array operations took and released the GIL so often that each side slowed the other.
"""

from __future__ import annotations

import functools
import json
import os
import queue
import re
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

import numpy as np
import Stemmer
from bm25s.stopwords import STOPWORDS_EN
from numba import njit, types
from scipy import sparse
from sklearn.feature_extraction.text import ENGLISH_STOP_WORDS, CountVectorizer, HashingVectorizer
from sklearn.utils import murmurhash3_32

from threatqa.chunking import Span, paragraphs, sentences

SENTENCE_WEIGHT = 0.5
CHAR_NGRAMS = (3, 5)  # n-gram sizes, inclusive
CHAR_CANDIDATES = 200  # passages (best by the word view) that the character view re-scores
K1, B = 1.5, 0.75  # BM25 parameters (the usual defaults)
BATCH = 10_000  # texts vectorised at a time when building
# One character n-gram of one sentence: its hash, its BM25 weight in the sentence, and its BM25
# weight in the passage shared out among the passage's sentences that have it (CharView).
ENTRY = np.dtype([("ngram", "<i4"), ("sentence", "<f4"), ("passage", "<f4")])
HASH_BITS = 20  # n-gram hashes are below 2**20
HASH_MASK = (1 << HASH_BITS) - 1
# counts stop there when building, far beyond a passage's length (about 300 to 2,000 characters)
MAX_COUNT, MAX_SHARING = 2**16 - 1, 2 ** (32 - HASH_BITS) - 1
_TOKEN = re.compile(r"(?u)\b\w\w+\b")
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


def _words_only(text: str) -> str:
    """Lower-cased words of two or more characters, space-separated (the char view's input)."""
    return " ".join(_TOKEN.findall(text.lower()))


# Character 3-5-grams inside words (padded with a space), hashed into a fixed-size space so the
# view needs no vocabulary; collisions at 2**20 buckets are rare enough not to matter for ranking.
_CHARS = HashingVectorizer(
    analyzer="char_wb", ngram_range=CHAR_NGRAMS, n_features=2**HASH_BITS, alternate_sign=False, norm=None,
    preprocessor=_words_only, dtype=np.float32,
)  # fmt: skip


_CHAR_ANALYZER = _CHARS.build_analyzer()


@functools.lru_cache(maxsize=1 << 18)
def _word_ngrams(word: str) -> np.ndarray:
    """The hashes of one word's character n-grams (repeats kept), as `_CHARS` hashes them: the
    absolute signed MurmurHash3 of each n-gram, modulo the number of buckets. char_wb n-grams never
    cross words, so a text's n-grams are its words', and each distinct word is hashed once."""
    grams = _CHAR_ANALYZER(word)
    hashes = np.abs(np.fromiter((murmurhash3_32(g, 0) for g in grams), np.int64, len(grams))) % _CHARS.n_features
    hashes = hashes.astype(np.int32)
    hashes.flags.writeable = False  # shared by every caller through the cache
    return hashes


def _text_ngrams(text: str) -> list[np.ndarray]:
    """The hashes of a text's character n-grams, word by word (repeats kept)."""
    return [_word_ngrams(word) for word in _words_only(text).split()]


def _char_counts(texts: Iterable[str]) -> sparse.csr_matrix:
    """What `_CHARS.transform(texts)` gives (n-gram counts, texts by hash), from the words' cached hashes."""
    hashes: list[np.ndarray] = []
    sizes: list[int] = []
    for text in texts:
        words = _text_ngrams(text)
        hashes.extend(words)
        sizes.append(sum(len(w) for w in words))
    columns = np.concatenate(hashes) if hashes else np.zeros(0, np.int32)
    rows = np.repeat(np.arange(len(sizes), dtype=np.int32), sizes)
    counts = sparse.csr_matrix(
        (np.ones(len(columns), np.float32), (rows, columns)), shape=(len(sizes), _CHARS.n_features)
    )
    counts.sum_duplicates()
    return counts


def _ngram_counts(text: str) -> tuple[np.ndarray, np.ndarray]:
    """The character n-gram hashes of one text (a question), ascending, and their counts."""
    words = _text_ngrams(text)
    if not words:
        return np.zeros(0, np.int32), np.zeros(0, np.float32)
    hashes, counts = np.unique(np.concatenate(words), return_counts=True)
    return hashes, counts.astype(np.float32)


def _idf(df: np.ndarray | int, n: int) -> np.ndarray:
    """BM25 IDF as Lucene computes it (never negative)."""
    return np.log(1 + (n - np.asarray(df) + 0.5) / (np.asarray(df) + 0.5))


def _saturate(tf: np.ndarray, lengths: np.ndarray, mean_length: float) -> np.ndarray:
    """BM25's term-frequency part for counts tf in texts of the given lengths (Lucene's variant)."""
    return tf / (tf + K1 * (1 - B + B * lengths / max(mean_length, 1e-9)))


def _mean(values: np.ndarray) -> float:
    return float(values.mean()) if len(values) else 0.0


def _scaled(scores: np.ndarray) -> np.ndarray:
    """Scores divided by the best one (all zero when none is positive)."""
    top = scores.max(initial=0.0)
    return scores / top if top > 0 else np.zeros(len(scores))


def _open(path: Path) -> np.ndarray:
    """A saved array, memory-mapped (as a plain ndarray: no per-access overhead of np.memmap)."""
    return np.asarray(np.load(path, mmap_mode="r"))


# ----------------------------------------------------------------------------- query-time kernels
# The loops of a query, compiled (numba) and run outside the GIL: the lexical side of a question
# runs beside the dense side (embedding + FAISS) on another thread, and in NumPy it held the GIL
# between its many array operations, slowing both sides. Each reads only what the query touches.


@njit(nogil=True, cache=True)
def _word_kernel(terms, passage_starts, passage_rows, passage_weights, sentence_starts, sentence_rows,
                 sentence_weights, owners, scores, found, mask, keep):  # fmt: skip
    """The word view's scores (passage BM25 + SENTENCE_WEIGHT x its best sentence's) of the passages
    that have one of the terms (a term given twice counts twice), only those where mask is True when
    mask is not empty; the best `keep` of them (ties to the lower row), in row order.

    scores (float32, passages x 2: BM25 and best sentence's, side by side so that a passage is one
    cache line) and found come zeroed and are left zeroed. A sentence's BM25 is summed by merging
    the terms' sentence postings (each in sentence order), so no array of all sentences is touched."""
    n = 0
    for t in terms:
        for j in range(passage_starts[t], passage_starts[t + 1]):
            row = passage_rows[j]
            if scores[row, 0] == 0.0:  # BM25 weights are positive: the passage's first term
                found[n] = row
                n += 1
            scores[row, 0] += passage_weights[j]
    # a passage has a term exactly when one of its sentences has it: the rows are all found
    at, ends = sentence_starts[terms], sentence_starts[terms + 1]
    while True:
        sentence = -1
        for i in range(len(terms)):
            if at[i] < ends[i] and (sentence < 0 or sentence_rows[at[i]] < sentence):
                sentence = sentence_rows[at[i]]
        if sentence < 0:
            break
        total, row = np.float32(0.0), 0
        for i in range(len(terms)):  # in the terms' order, as a sum over them is
            if at[i] < ends[i] and sentence_rows[at[i]] == sentence:
                total += sentence_weights[at[i]]
                row = owners[at[i]]
                at[i] += 1
        scores[row, 1] = max(scores[row, 1], total)
    # many rows: a pass over all passages costs less than sorting them
    rows = np.flatnonzero(scores[:, 0]).astype(found.dtype) if n * 32 >= len(found) else np.sort(found[:n])
    found[:n] = 0
    result = np.empty(len(rows))
    m = 0
    for row in rows:
        if len(mask) == 0 or mask[row]:
            rows[m] = row
            result[m] = np.float64(scores[row, 0]) + SENTENCE_WEIGHT * np.float64(scores[row, 1])
            m += 1
        scores[row, 0], scores[row, 1] = 0.0, 0.0
    rows, result = rows[:m], result[:m]
    if m <= keep:
        return rows, result
    threshold = _kth_largest(result, keep)
    ties = keep  # places left for scores equal to the threshold, in row order
    for score in result:
        ties -= score > threshold
    n = 0
    for i in range(m):
        if result[i] > threshold or (result[i] == threshold and ties > 0):
            ties -= result[i] == threshold
            rows[n], result[n] = rows[i], result[i]
            n += 1
    return rows[:n], result[:n]


@njit(nogil=True, cache=True)
def _kth_largest(values, k):
    """The k-th largest of values (k from 1), by quickselect (Hoare's partition) on a copy: written
    out because numba's np.partition takes seconds to compile."""
    a = values.copy()
    lo, hi, target = 0, len(a) - 1, k - 1  # a is being ordered from largest to smallest
    while lo < hi:
        pivot, i, j = a[(lo + hi) // 2], lo, hi
        while i <= j:
            while a[i] > pivot:
                i += 1
            while a[j] < pivot:
                j -= 1
            if i <= j:
                a[i], a[j] = a[j], a[i]
                i, j = i + 1, j - 1
        if target <= j:
            hi = j
        elif target >= i:
            lo = i
        else:  # between the two parts: equal to the pivot
            break
    return a[target]


@njit(nogil=True, cache=True)
def _contains(indptr, indices, terms, rows):
    """found[i, j]: whether passage rows[j] has term terms[i] (a term below 0 is in none)."""
    found = np.zeros((len(terms), len(rows)))
    for i in range(len(terms)):
        if terms[i] < 0:
            continue
        postings = indices[indptr[terms[i]] : indptr[terms[i] + 1]]
        for j in range(len(rows)):
            at = np.searchsorted(postings, rows[j])
            found[i, j] = at < len(postings) and postings[at] == rows[j]
    return found


# pread(2) from the C library, called from compiled code without the GIL (resolved by name, so the
# compiled kernel can be cached); the buffer's address is passed as an integer
_PREAD = types.ExternalFunction("pread", types.intp(types.intc, types.uintp, types.uintp, types.int64))
_ENTRY_SIZE = ENTRY.itemsize


@njit(nogil=True, cache=True)
def _ngram_table(hashes, counts):
    """An open-addressing hash table of the question's n-gram counts (keys -1 where empty), a few KB
    that stay in the processor's cache, where a count per possible hash would take 4 MB."""
    size = 64
    while size < 4 * len(hashes):
        size *= 2
    keys, values = np.full(size, -1, np.int32), np.zeros(size, np.float32)
    for i in range(len(hashes)):
        at = (hashes[i] * 2654435761) & (size - 1)
        while keys[at] != -1 and keys[at] != hashes[i]:
            at = (at + 1) & (size - 1)
        keys[at] = hashes[i]
        values[at] += counts[i]
    return keys, values


@njit(nogil=True, cache=True)
def _char_kernel(fd, indptr, firsts, lasts, hashes, counts, address, ngrams, in_sentence, in_passage):  # fmt: skip
    """For passages whose sentences are firsts[i] .. lasts[i] - 1: each passage's BM25 of the
    question's n-grams (hashes, with their counts) and its best sentence's, reading each passage's
    entries from the file fd into the buffer at address (whose fields ngrams .. in_passage are).
    Returns them with a status: 0, -1 when a read failed or came short, -2 when a passage does not
    fit the buffer."""
    keys, values = _ngram_table(hashes, counts)
    mask = len(keys) - 1
    passages, best = np.zeros(len(firsts)), np.zeros(len(firsts))
    for p in range(len(firsts)):
        first, size = indptr[firsts[p]], indptr[lasts[p]] - indptr[firsts[p]]
        if size > len(ngrams):
            return passages, best, -2
        done, want = 0, size * _ENTRY_SIZE
        while done < want:
            got = _PREAD(fd, address + done, want - done, first * _ENTRY_SIZE + done)
            if got <= 0:
                return passages, best, -1
            done += got
        at = 0  # the sentence's first entry in the buffer
        for s in range(firsts[p], lasts[p]):
            in_this, end = 0.0, at + indptr[s + 1] - indptr[s]
            for j in range(at, end):
                ngram = ngrams[j]
                slot = (ngram * 2654435761) & mask
                while keys[slot] != ngram and keys[slot] != -1:
                    slot = (slot + 1) & mask
                if keys[slot] == ngram:
                    in_this += in_sentence[j] * values[slot]
                    passages[p] += in_passage[j] * values[slot]
            best[p], at = max(best[p], in_this), end
    return passages, best, 0


@dataclass(frozen=True)
class WordView:
    """BM25 weights of word stems, stored by stem (CSC: rows are texts, columns stems)."""

    data: np.ndarray  # float32 weight per posting
    indices: np.ndarray  # int32 text row per posting, ascending within a stem
    indptr: np.ndarray  # int64, len(vocabulary) + 1
    rows: int

    @classmethod
    def from_counts(cls, counts: sparse.csr_matrix) -> WordView:
        """BM25 weights from a (texts x stems) count matrix."""
        lengths = np.asarray(counts.sum(axis=1), dtype=np.float32).ravel()
        idf = _idf(np.bincount(counts.indices, minlength=counts.shape[1]), counts.shape[0]).astype(np.float32)
        per_entry = np.repeat(lengths, np.diff(counts.indptr))
        counts.data = idf[counts.indices] * _saturate(counts.data, per_entry, _mean(lengths))
        weights = counts.astype(np.float32).tocsc()
        weights.sort_indices()
        return cls(weights.data, weights.indices.astype(np.int32), weights.indptr.astype(np.int64), counts.shape[0])

    def save(self, folder: Path, name: str) -> None:
        for part in ("data", "indices", "indptr"):
            np.save(folder / f"{name}-{part}.npy", getattr(self, part))

    @classmethod
    def load(cls, folder: Path, name: str, rows: int) -> WordView:
        return cls(*(_open(folder / f"{name}-{part}.npy") for part in ("data", "indices", "indptr")), rows=rows)


def _sum_by_passage(counts: sparse.csr_matrix, per_passage: np.ndarray) -> sparse.csr_matrix:
    """Passage rows from sentence rows: a passage's words are exactly its sentences' words (sentences
    split at whitespace and cover the passage), so its counts are their sums."""
    owner = np.repeat(np.arange(len(per_passage)), per_passage)
    summing = sparse.csr_matrix((np.ones(len(owner), np.float32), (owner, np.arange(len(owner)))),
                                shape=(len(per_passage), counts.shape[0]))  # fmt: skip
    return (summing @ counts).tocsr()


def _at_pattern(present: sparse.csr_matrix, values: sparse.csr_matrix) -> np.ndarray:
    """values' entries at each stored entry of present (a matrix of ones, all of whose entries values
    has), in present's order."""
    picked = present.multiply(values).tocsr()
    picked.sort_indices()
    if not (np.array_equal(picked.indptr, present.indptr) and np.array_equal(picked.indices, present.indices)):
        raise AssertionError("a passage lacks an n-gram of one of its sentences")
    return picked.data


class _CharWriter:
    """A character view being built: counts a batch of passages at a time to a raw file (with the
    document frequencies and lengths kept), then BM25 weights in a second sequential pass."""

    # an n-gram of a sentence, counted: its hash and (above HASH_BITS) how many of the passage's
    # sentences have it; its count in the sentence; its count in the passage
    COUNTS = np.dtype([("key", "<u4"), ("sentence", "<u2"), ("passage", "<u2")])

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self.raw = folder / f".{CharView.ENTRIES}.raw"
        self.out = self.raw.open("wb")
        self.df = [np.zeros(_CHARS.n_features, np.int64), np.zeros(_CHARS.n_features, np.int64)]
        self.sizes: list[np.ndarray] = []  # entries per sentence
        self.lengths: list[np.ndarray] = []  # n-grams per sentence
        self.per_passage: list[np.ndarray] = []  # sentences per passage

    def add(self, counts: sparse.csr_matrix, per_passage: np.ndarray) -> None:
        """counts: the batch's sentences (rows) by n-gram hash; per_passage: each passage's number of sentences."""
        counts.sort_indices()
        passages = _sum_by_passage(counts, per_passage)
        present = counts.copy()
        present.data = np.ones(len(present.data), dtype=np.float32)
        owner = np.repeat(np.arange(len(per_passage)), per_passage)
        sharing = np.minimum(_at_pattern(present, _sum_by_passage(present, per_passage)[owner]), MAX_SHARING)
        entries = np.empty(len(counts.data), dtype=self.COUNTS)
        entries["key"] = counts.indices.astype(np.uint32) | (sharing.astype(np.uint32) << HASH_BITS)
        entries["sentence"] = np.minimum(counts.data, MAX_COUNT)
        entries["passage"] = np.minimum(_at_pattern(present, passages[owner]), MAX_COUNT)
        entries.tofile(self.out)
        self.sizes.append(np.diff(counts.indptr))
        self.lengths.append(np.asarray(counts.sum(axis=1), dtype=np.float32).ravel())
        self.per_passage.append(per_passage)
        self.df[0] += np.bincount(counts.indices, minlength=_CHARS.n_features)
        self.df[1] += np.bincount(passages.indices, minlength=_CHARS.n_features)

    def finish(self) -> None:
        self.out.close()
        sizes, lengths, per_passage = (np.concatenate(parts) if parts else np.zeros(0, np.int64)
                                       for parts in (self.sizes, self.lengths, self.per_passage))  # fmt: skip
        passage_lengths = _segment_sums(lengths, per_passage)
        idf = [_idf(df, n).astype(np.float32) for df, n in zip(self.df, (len(lengths), len(per_passage)))]
        means = _mean(lengths), _mean(passage_lengths)
        sentence_lengths = lengths.astype(np.float32)
        passage_of_sentence = np.repeat(passage_lengths.astype(np.float32), per_passage)
        indptr = np.concatenate(([0], np.cumsum(sizes))).astype(np.int64)
        # plain sequential reads and writes: memory-mapping files this size would make every page
        # of them count as the process's resident memory
        with self.raw.open("rb") as raw, (self.folder / CharView.ENTRIES).open("wb") as out:
            for first in range(0, len(sizes), BATCH * 10):
                rows = slice(first, min(first + BATCH * 10, len(sizes)))
                counts = np.fromfile(raw, dtype=self.COUNTS, count=int(indptr[rows.stop] - indptr[rows.start]))
                ngrams, sharing = counts["key"] & HASH_MASK, counts["key"] >> HASH_BITS
                entries = np.empty(len(counts), dtype=ENTRY)
                entries["ngram"] = ngrams
                entries["sentence"] = idf[0][ngrams] * _saturate(
                    counts["sentence"], np.repeat(sentence_lengths[rows], sizes[rows]), means[0]
                )
                entries["passage"] = (
                    idf[1][ngrams]
                    * _saturate(counts["passage"], np.repeat(passage_of_sentence[rows], sizes[rows]), means[1])
                    / sharing
                )
                entries.tofile(out)
        self.raw.unlink()
        np.save(self.folder / "char-indptr.npy", indptr)


def _segment_sums(values: np.ndarray, sizes: np.ndarray) -> np.ndarray:
    """Sums of consecutive segments of values with the given sizes (0 for an empty one)."""
    sums, filled = np.zeros(len(sizes), dtype=np.float64), sizes > 0
    if filled.any():
        sums[filled] = np.add.reduceat(values, (np.cumsum(sizes) - sizes)[filled])
    return sums


@dataclass(frozen=True)
class CharView:
    """BM25 of character n-grams in passages and in their sentences, stored by sentence.

    A sentence is a run of entries, one per n-gram it has: the n-gram's hash, its BM25 weight in
    the sentence, and its BM25 weight in the passage divided by the number of the passage's
    sentences that have it (so the passage's own BM25 is a sum over its sentences' entries).
    A passage's sentences are adjacent, so a candidate is one read, and only the candidates' rows
    are ever read: a query's cost does not grow with the corpus. They are read with pread(2)
    rather than memory-mapped: this view is the largest part of the index (about 10 KB a passage),
    and mapped pages of it would count as the server's resident memory, growing with every
    candidate ever read."""

    ENTRIES = "char-entries.bin"  # ENTRY records, sentence after sentence

    file: BinaryIO  # ENTRIES, unbuffered
    indptr: np.ndarray  # int64, sentences + 1: sentence i's entries are [indptr[i], indptr[i + 1])

    @classmethod
    def load(cls, folder: Path) -> CharView:
        file = (folder / cls.ENTRIES).open("rb", buffering=0)
        indptr = np.load(folder / "char-indptr.npy")
        if os.fstat(file.fileno()).st_size != int(indptr[-1]) * ENTRY.itemsize:
            file.close()
            raise ValueError(f"{file.name} does not hold the {int(indptr[-1])} entries its index says")
        return cls(file, indptr)

    def largest(self, firsts: np.ndarray, lasts: np.ndarray) -> int:
        """The most entries of any of these passages (sentences firsts[i] .. lasts[i] - 1)."""
        return int((self.indptr[lasts] - self.indptr[firsts]).max(initial=0))

    def scores(
        self, query: tuple[np.ndarray, np.ndarray], firsts: np.ndarray, lasts: np.ndarray, buffer: np.ndarray
    ) -> tuple[np.ndarray, np.ndarray]:
        """For passages whose sentences are firsts[i] .. lasts[i] - 1: the BM25 of the question's
        character n-grams (query: their hashes and counts) in each passage and in its best sentence.
        Each passage is read into buffer (ENTRY records, as many as `largest` says), reused from query
        to query, and scored there while it is in the processor's cache."""
        passages, best, status = _char_kernel(
            self.file.fileno(), self.indptr, firsts, lasts, *query, buffer.ctypes.data,
            buffer["ngram"], buffer["sentence"], buffer["passage"],
        )  # fmt: skip
        if status == -2:
            raise ValueError(f"a buffer of {len(buffer)} entries is too small for these passages")
        if status:
            raise OSError(f"{self.file.name}: short read")
        return passages, best


@dataclass(frozen=True)
class _Scratch:
    """Zeroed arrays a query accumulates into, reused from query to query and zeroed again where
    written: fresh arrays of corpus size would cost a page fault per 4 KB at every query."""

    scores: np.ndarray  # float32 per passage: word-view BM25 and its best sentence's
    found: np.ndarray  # int32 per passage: the rows found, in the order found
    reads: np.ndarray  # ENTRY records, as many as the largest passage has: where the character view reads

    @classmethod
    def create(cls, passages: int, largest: int) -> _Scratch:
        return cls(np.zeros((passages, 2), np.float32), np.zeros(passages, np.int32), np.zeros(largest, ENTRY))


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
        meta = json.loads((folder / self.META).read_text())
        self.count = int(meta["count"])
        self.vocabulary: dict[str, int] = meta["vocabulary"]
        self.words = WordView.load(folder, "word", self.count)
        self.word_sentences = WordView.load(folder, "word-sentences", int(meta["sentences"]))
        self.sentence_starts = np.load(folder / "sentence_starts.npy")  # each passage's first sentence
        self.sentence_ends = np.append(self.sentence_starts[1:], self.word_sentences.rows)
        self.chars = CharView.load(folder)
        self.largest = self.chars.largest(self.sentence_starts, self.sentence_ends)
        owner = np.repeat(np.arange(self.count, dtype=np.int32), self.sentence_ends - self.sentence_starts)
        # the passage of each sentence posting, read in order at query time (4 bytes a posting, in memory)
        self.posting_owner = owner[self.word_sentences.indices]
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
        WordView.from_counts(_sum_by_passage(sentence_counts, per_passage)).save(folder, "word")
        WordView.from_counts(sentence_counts).save(folder, "word-sentences")
        del sentence_counts
        chars = _CharWriter(folder)
        for first in range(0, len(texts), BATCH):
            chars.add(_char_counts(_sentences(texts[first : first + BATCH])), per_passage[first : first + BATCH])
        chars.finish()
        np.save(folder / "sentence_starts.npy", (np.cumsum(per_passage) - per_passage).astype(np.int64))
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

    def search(self, question: str, k: int, mask: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
        """The k best passage rows and their scores (only rows where mask is True, if given).

        A question of stopwords only has nothing to search for, even though its character
        n-grams would match almost every passage."""
        stems = word_tokens(question)
        if not self.count or not stems:
            return np.zeros(0, dtype=np.int64), np.zeros(0, dtype=np.float32)
        scratch = self._take_scratch()
        result = self._search(question, self.terms(stems), k, mask, scratch)
        self._free.put(scratch)  # only after a completed search, which leaves it zeroed again
        return result

    def _search(
        self, question: str, terms: np.ndarray, k: int, mask: np.ndarray | None, scratch: _Scratch
    ) -> tuple[np.ndarray, np.ndarray]:
        rows, word = self._word_scores(terms, scratch, mask, max(k, CHAR_CANDIDATES))
        if len(rows) < k and self.count <= CHAR_CANDIDATES * 10:
            # too few passages share a word with the question: in a small index, let the character
            # view find the nearest ones (partial words), so there is something to show
            allowed = np.flatnonzero(mask) if mask is not None else np.arange(self.count)
            extra = np.setdiff1d(allowed[: CHAR_CANDIDATES * 10], rows)
            rows, word = np.concatenate((rows, extra)), np.concatenate((word, np.zeros(len(extra))))
            order = np.argsort(rows)
            rows, word = rows[order], word[order]
        if not len(rows):
            return np.zeros(0, dtype=np.int64), np.zeros(0, dtype=np.float32)
        passage, sentence = self.chars.scores(
            _ngram_counts(question), self.sentence_starts[rows], self.sentence_ends[rows], scratch.reads
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
            return _Scratch.create(self.count, self.largest)

    def _word_scores(
        self, terms: np.ndarray, scratch: _Scratch, mask: np.ndarray | None = None, keep: int | None = None
    ) -> tuple[np.ndarray, np.ndarray]:
        """Rows sharing a stem with the question (only where mask is True, if given) and their word-view
        score, BM25 + half the best sentence's; the best `keep` of them (ties to the lower row), in row order."""
        words, sentences = self.words, self.word_sentences
        return _word_kernel(  # type: ignore[no-any-return]
            terms, words.indptr, words.indices, words.data, sentences.indptr, sentences.indices, sentences.data,
            self.posting_owner, scratch.scores, scratch.found, _NO_MASK if mask is None else mask,
            self.count if keep is None else keep,
        )  # fmt: skip

    def word_weights(self, words: list[str]) -> np.ndarray:
        """The IDF of each word's stem over the passages; a word the index does not know weighs as
        much as the rarest possible term (as in `coverage`)."""
        columns = np.array([self.vocabulary.get(_stem(w), -1) for w in words], dtype=np.int64)
        df = np.zeros(len(words), dtype=np.int64)
        known = columns >= 0
        df[known] = self.words.indptr[columns[known] + 1] - self.words.indptr[columns[known]]
        return _idf(df, self.count)

    def coverage(self, question: str, rows: list[int]) -> list[float]:
        """For each passage row: the share of the question's IDF mass (distinct word stems) it contains.

        Terms unknown to the index weigh as much as the rarest possible term, so a question about
        something the documents never mention scores near zero."""
        stems = list(dict.fromkeys(word_tokens(question)))
        if not stems:
            return [0.0] * len(rows)
        columns = np.array([self.vocabulary.get(stem, -1) for stem in stems], dtype=np.int64)
        known = columns >= 0
        df = np.zeros(len(stems), dtype=np.int64)
        df[known] = self.words.indptr[columns[known] + 1] - self.words.indptr[columns[known]]
        weights = _idf(df, self.count)
        found = _contains(self.words.indptr, self.words.indices, columns, np.asarray(rows, dtype=np.int64))
        return (weights @ found / weights.sum()).tolist()
