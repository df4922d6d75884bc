"""BM25 statistics of a subset of the passages (part of the lexical stage): what a lexical index
built from only those passages would hold, worked out from the full index.

Need-to-know access (policy.py) restricts a user's search to the documents they may read. A row
mask alone is not enough: BM25 scores depend on corpus statistics (each term's document
frequency, the number of passages and sentences, their mean lengths), and statistics over every
passage would let a user learn, through the scores of the passages they can read, that some
restricted passage uses a word. So a restricted search uses the statistics of the readable
passages only, computed here from the mask:

- the word view's document frequencies over passages and over sentences (one pass over the
  postings, `_word_df`), its mean passage and sentence lengths (NumPy means over the readable
  lengths, in row order, exactly as a build of those passages computes them);
- the character view's n-gram document frequencies and mean lengths in n-grams (one pass over
  the readable passages' word ids, `_char_df`).

Integer counts make the IDFs bit-for-bit those of the smaller index, and the means are computed
the same way over the same values, so scores, order and abstention are identical to a search in
an index built from the readable documents alone (tests/test_policy.py checks it). The cost is
paid once per distinct readable set (the engine caches it), not per question: measured in
benchmarks/policy.py.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from numba import njit

from threatqa.lexical_bm25 import _idf, _mean


@dataclass(frozen=True)
class CharStatistics:
    """The character view's statistics over some passages: for each n-gram of the corpus (aligned
    with `CharView.ngrams`), the sentences and passages that have it; their numbers; mean lengths."""

    df: np.ndarray  # (n-grams, 2) int32
    sentences: int
    passages: int
    means: np.ndarray  # float64: mean sentence and passage lengths, in n-grams


@dataclass(frozen=True)
class Statistics:
    """BM25 statistics of the passages where `mask` is True, as their own index would hold them."""

    mask: np.ndarray  # bool per passage row
    count: int  # passages
    df: np.ndarray  # int32 per stem: readable passages that have it
    idf: np.ndarray  # float32 (stems, 2): IDF over passages and over sentences
    means: np.ndarray  # float64: mean sentence and passage lengths in words
    chars: CharStatistics

    @property
    def nbytes(self) -> int:
        """Memory held, in bytes (the engine keeps a few dozen sets)."""
        arrays = (self.mask, self.df, self.idf, self.means, self.chars.df, self.chars.means)
        return sum(a.nbytes for a in arrays)


@njit(nogil=True, cache=True)
def _word_df(indptr, owners, mask):
    """For each stem: the passages where mask is True that have it, and their sentences that have it
    (a stem's postings are its sentences, ascending, so a passage's postings are adjacent)."""
    stems = len(indptr) - 1
    passages, sentences = np.zeros(stems, np.int32), np.zeros(stems, np.int32)
    for t in range(stems):
        last = -1
        for j in range(indptr[t], indptr[t + 1]):
            row = owners[j]
            if mask[row]:
                sentences[t] += 1
                if row != last:
                    passages[t] += 1
                    last = row
    return passages, sentences


@njit(nogil=True, cache=True)
def _char_df(tokens, indptr, firsts, lasts, rows, word_indptr, word_positions, size):
    """For the passages `rows` (sentences firsts[row] .. lasts[row] - 1, word ids as LEB128 varints in
    tokens at indptr): each n-gram position's sentences and passages, and the total length in n-grams."""
    df = np.zeros((size, 2), np.int32)
    last_sentence, last_passage = np.full(size, -1, np.int64), np.full(size, -1, np.int64)
    total = 0
    for row in rows:
        for s in range(firsts[row], lasts[row]):
            at, end = indptr[s], indptr[s + 1]
            while at < end:
                word, shift = 0, 0
                while True:
                    byte = tokens[at]
                    at += 1
                    word |= (np.int64(byte) & 0x7F) << shift
                    if byte < 0x80:
                        break
                    shift += 7
                start, stop = np.int64(word_indptr[word]), np.int64(word_indptr[word + 1])
                total += stop - start
                for j in range(start, stop):
                    position = word_positions[j]
                    if last_sentence[position] != s:
                        last_sentence[position] = s
                        df[position, 0] += 1
                    if last_passage[position] != row:
                        last_passage[position] = row
                        df[position, 1] += 1
    return df, total


def word_statistics(
    indptr: np.ndarray, owners: np.ndarray, lengths: tuple[np.ndarray, np.ndarray], per_passage: np.ndarray,
    mask: np.ndarray,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:  # fmt: skip
    """The word view's passage document frequencies, IDF (stems x 2) and mean lengths over the masked passages."""
    passages, sentences = _word_df(indptr, owners, mask)
    sentence_mask = np.repeat(mask, per_passage)
    idf = np.stack([_idf(passages, int(mask.sum())), _idf(sentences, int(sentence_mask.sum()))], axis=1)
    means = np.array([_mean(lengths[0][sentence_mask]), _mean(lengths[1][mask])])
    return passages, idf.astype(np.float32), means


def char_statistics(
    tokens: np.ndarray, indptr: np.ndarray, firsts: np.ndarray, lasts: np.ndarray, word_indptr: np.ndarray,
    word_positions: np.ndarray, size: int, mask: np.ndarray,
) -> CharStatistics:  # fmt: skip
    """The character view's statistics over the masked passages (CharWriter's formulas)."""
    rows = np.flatnonzero(mask)
    df, total = _char_df(tokens, indptr, firsts, lasts, rows, word_indptr, word_positions, size)
    sentences, passages = int((lasts[rows] - firsts[rows]).sum()), len(rows)
    means = np.array([float(total) / max(sentences, 1), float(total) / max(passages, 1)])
    return CharStatistics(df, sentences, passages, means)
