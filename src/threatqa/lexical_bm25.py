"""What the lexical views share: the word pattern, BM25 (Lucene's variant: parameters, IDF,
term-frequency saturation), and the sums that turn sentence rows into passage rows."""

from __future__ import annotations

import re

import numpy as np
from scipy import sparse

K1, B = 1.5, 0.75  # BM25 parameters (the usual defaults)
_TOKEN = re.compile(r"(?u)\b\w\w+\b")  # a word: two or more word characters (scikit-learn's default)


def _idf(df: np.ndarray | int, n: int) -> np.ndarray:
    """BM25 IDF as Lucene computes it (never negative)."""
    return np.log(1 + (n - np.asarray(df) + 0.5) / (np.asarray(df) + 0.5))


def _saturate(tf: np.ndarray, lengths: np.ndarray, mean_length: float) -> np.ndarray:
    """BM25's term-frequency part for counts tf in texts of the given lengths (Lucene's variant)."""
    return tf / (tf + K1 * (1 - B + B * lengths / max(mean_length, 1e-9)))


def _mean(values: np.ndarray) -> float:
    return float(values.mean()) if len(values) else 0.0


def _sum_by_passage(counts: sparse.csr_matrix, per_passage: np.ndarray) -> sparse.csr_matrix:
    """Passage rows from sentence rows: a passage's words are exactly its sentences' words (sentences
    split at whitespace and cover the passage), so its counts are their sums."""
    owner = np.repeat(np.arange(len(per_passage)), per_passage)
    summing = sparse.csr_matrix((np.ones(len(owner), np.float32), (owner, np.arange(len(owner)))),
                                shape=(len(per_passage), counts.shape[0]))  # fmt: skip
    return (summing @ counts).tocsr()


def _segment_sums(values: np.ndarray, sizes: np.ndarray) -> np.ndarray:
    """Sums of consecutive segments of values with the given sizes (0 for an empty one)."""
    sums, filled = np.zeros(len(sizes), dtype=np.float64), sizes > 0
    if filled.any():
        sums[filled] = np.add.reduceat(values, (np.cumsum(sizes) - sizes)[filled])
    return sums
