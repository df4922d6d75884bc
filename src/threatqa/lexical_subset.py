"""BM25 statistics of a subset of the passages (part of the lexical stage): what a lexical index
built from only those passages would hold, worked out from the full index.

Need-to-know access (policy.py) restricts a user's search to the documents they may read. A row
mask alone is not enough: BM25 scores depend on corpus statistics (each term's document
frequency, the number of passages and sentences, their mean lengths), and statistics over every
passage would let a user learn, through the scores of the passages they can read, that some
restricted passage uses a word. So a restricted search uses the statistics of the readable
passages only, computed here from the mask:

- the word view's document frequencies over passages and over sentences (one pass over the
  postings, `_word_df_parts`), its mean passage and sentence lengths (NumPy means over the
  readable lengths, in row order, exactly as a build of those passages computes them);
- the character view's n-gram document frequencies and mean lengths in n-grams (one pass over
  the readable passages' word ids, `lexical_chars._char_df`).

Integer counts make the IDFs bit-for-bit those of the smaller index, and the means are computed
the same way over the same values, so scores, order and abstention are identical to a search in
an index built from the readable documents alone (tests/test_policy.py checks it).

Counts add up over disjoint sets of passages, so the engine counts each *label*'s passages once,
when it labels an index version (`Part`s, one pass over the postings for all labels together),
and a user's statistics are the sum of the parts they may read (`combine`): a few milliseconds at
100k passages, the same for a readable set seen before or not. Counting the set on its first
question instead (tens of milliseconds at 100k passages) would let a user time whether someone
with the same groups had asked recently. Measured in benchmarks/policy.py.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

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
    # the readable labels' dense windows (dense.DensePart), made with their counts; None: the dense search
    # makes its own filter from `mask`
    windows: tuple[Any, ...] | None = None

    @property
    def nbytes(self) -> int:
        """Memory held, in bytes (the engine keeps a few dozen sets)."""
        arrays = (self.mask, self.df, self.idf, self.means, self.chars.df, self.chars.means)
        return sum(a.nbytes for a in arrays)


SPARSE_BELOW = 8  # a part is kept sparse when under 1/8 of the stems (or n-grams) are in its passages


@dataclass(frozen=True)
class Part:
    """The counts of one set of passages (one label's): for each stem, the passages and sentences
    that have it; the same for the character view's n-grams, and its n-gram total. Kept sparse (the
    stems or n-grams present, and their counts) when few are, else dense (None: every one, in
    order), as adding a dense part is a single vector add. Parts of disjoint sets add up to their
    union's counts."""

    mask: np.ndarray  # bool per passage row
    stems: np.ndarray | None  # int32: the stems these passages have (None: all)
    word_df: np.ndarray  # (stems, 2) int32: passages, sentences
    ngrams: np.ndarray | None  # int32: the n-gram positions these passages have (None: all)
    char_df: np.ndarray  # (n-grams, 2) int32: sentences, passages
    char_total: int  # n-grams in these passages

    @property
    def nbytes(self) -> int:
        arrays = (self.mask, self.stems, self.word_df, self.ngrams, self.char_df)
        return sum(a.nbytes for a in arrays if a is not None)


def _sparse(present: np.ndarray, counts: np.ndarray) -> tuple[np.ndarray | None, np.ndarray]:
    """(positions, their counts) when few of the positions are present, else (None, every count)."""
    if len(present) * SPARSE_BELOW >= len(counts):
        return None, counts
    return present.astype(np.int32), counts[present]


def _add(total: np.ndarray, positions: np.ndarray | None, counts: np.ndarray) -> None:
    if positions is None:
        total += counts
    else:
        total[positions] += counts


@njit(nogil=True, cache=True)
def _word_df_parts(indptr, owners, part_of, parts):
    """For every stem and every part (part_of[row]: the part of each passage row, -1 for none) that
    has it: the part's passages and sentences with the stem, as (stem, part, passages, sentences)
    rows, one pass over the postings for all parts."""
    stems = len(indptr) - 1
    out = np.empty((len(owners), 4), np.int32)
    passages, sentences = np.zeros(parts, np.int32), np.zeros(parts, np.int32)
    last, touched = np.full(parts, -1, np.int64), np.empty(parts, np.int32)
    n = 0
    for t in range(stems):
        k = 0
        for j in range(indptr[t], indptr[t + 1]):
            row = owners[j]
            p = part_of[row]
            if p < 0:
                continue
            if sentences[p] == 0:
                touched[k] = p
                k += 1
            sentences[p] += 1
            if row != last[p]:  # a stem's postings are in row order: a passage's are adjacent
                passages[p] += 1
                last[p] = row
        for i in range(k):
            p = touched[i]
            out[n, 0], out[n, 1], out[n, 2], out[n, 3] = t, p, passages[p], sentences[p]
            n += 1
            passages[p], sentences[p], last[p] = 0, 0, -1
    return out[:n]


def parts(
    masks: list[np.ndarray], indptr: np.ndarray, owners: np.ndarray, char_counts: Callable[[np.ndarray], tuple],
) -> list[Part]:  # fmt: skip
    """The counts of each of the disjoint sets of passages `masks`; `char_counts(rows)` gives the
    character view's (df, total) over some passage rows."""
    part_of = np.full(len(masks[0]) if masks else 0, -1, np.int32)
    for i, mask in enumerate(masks):
        if (part_of[mask] >= 0).any():
            raise ValueError("parts must not overlap")
        part_of[mask] = i
    rows = _word_df_parts(indptr, owners, part_of, len(masks))
    order = np.argsort(rows[:, 1], kind="stable")
    bounds = np.searchsorted(rows[order, 1], np.arange(len(masks) + 1))
    result = []
    for i, mask in enumerate(masks):
        mine = rows[order[bounds[i] : bounds[i + 1]]]
        word = np.zeros((len(indptr) - 1, 2), np.int32)
        word[mine[:, 0]] = mine[:, 2:]
        stems, word = _sparse(mine[:, 0], word)
        chars, total = char_counts(np.flatnonzero(mask))
        ngrams, chars = _sparse(np.flatnonzero(chars.any(axis=1)), chars)
        result.append(Part(mask, stems, word, ngrams, chars, int(total)))
    return result


def combine(
    chosen: list[Part], passages: int, stems: int, ngrams: int, lengths: tuple[np.ndarray, np.ndarray],
    per_passage: np.ndarray,
) -> Statistics:  # fmt: skip
    """The statistics of the union of some parts' passages, as their own index would hold them: the
    same as counting the union directly (`word_statistics`, `char_statistics`), summed instead."""
    mask = np.zeros(passages, dtype=bool)
    word, chars = np.zeros((stems, 2), np.int32), np.zeros((ngrams, 2), np.int32)
    total = 0
    for part in chosen:
        mask |= part.mask
        _add(word, part.stems, part.word_df)
        _add(chars, part.ngrams, part.char_df)
        total += part.char_total
    sentence_mask = np.repeat(mask, per_passage)
    count, sentences = int(mask.sum()), int(sentence_mask.sum())
    idf = np.stack([_idf(word[:, 0], count), _idf(word[:, 1], sentences)], axis=1).astype(np.float32)
    means = np.array([_mean(lengths[0][sentence_mask]), _mean(lengths[1][mask])])
    char_means = np.array([float(total) / max(sentences, 1), float(total) / max(count, 1)])
    return Statistics(mask, count, word[:, 0].copy(), idf, means, CharStatistics(chars, sentences, count, char_means))
