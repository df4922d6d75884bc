"""Dense half of the index stage: FAISS over the vectors of passage windows, searched by passage.

Each passage is embedded as windows (runs of whole sentences, see `chunking.windows`), and a
passage scores by its best window. FAISS ids are window numbers; `owners[w]` is the passage row
of window `w`, and a passage's windows are consecutive, so `starts` (its CSR pointer) gives them.

Files in an index version:
    dense.faiss   inner-product index over the normalised window vectors, kept only as scalar-quantiser
                  codes (`DenseConfig.codes`): searched exhaustively up to `DenseConfig.ann_threshold`
                  windows, by IVF lists above. The codes are the only copy of the vectors: exact
                  re-scoring, filtered search and incremental builds decode them (`DenseIndex.vectors`).
                  Written without its codes, which are in dense.codes (unless it is too large to read in)
    dense.codes   the codes, compressed (`write_codes`); read into the index when it opens
    windows.npy   (windows, 2): each window's start and end offsets in its passage, and
    window-counts.npy   the windows of each passage, by row (a passage's windows are consecutive), both
                  as the narrowest unsigned integers that hold them (4 and 1 bytes: 12 as int32 triples)
    terms.json, terms.npy   the corpus's content words and their vectors (int8 by dimension, see `TermVectors`),
                  for term matching: how well a passage's words match the question's, synonyms included
(each `.npy` array may be stored compressed, as `.npy.br`: arrays.py)
"""

from __future__ import annotations

import contextlib
import json
import os
import struct
import sys
from collections import deque
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import brotli
import numpy as np
from numba import njit

from threatqa import arrays
from threatqa.errors import IndexMismatch

DENSE = "dense.faiss"
DENSE_CODES = "dense.codes"
WINDOWS, WINDOW_COUNTS = "windows.npy", "window-counts.npy"
TERMS, TERM_VECTORS = "terms.json", "terms.npy"
# Windows fetched per passage wanted: a passage has about 4 windows of 200 characters, and the
# best windows of a question cluster in few passages; fetched again, wider, when too few.
_WINDOWS_PER_PASSAGE = 4


# scalar-quantiser codes a window vector may be kept as (DenseConfig.codes and ann_codes), and the
# number of steps across a dimension's range of each (FAISS decodes code c as vmin + (c + 0.5) / steps * vdiff)
CODES = {"8bit": "QT_8bit", "6bit": "QT_6bit", "4bit": "QT_4bit"}
STEPS = {"8bit": 255, "6bit": 63, "4bit": 15}


@dataclass(frozen=True)
class DenseConfig:
    """How the dense index is built: an exhaustive scan of the codes up to `ann_threshold` vectors, IVF
    lists of the same codes above.

    Measured on 384-d clustered vectors (benchmarks/ann.py): exact search costs about 0.15 ms per
    thousand vectors a question, so it stays under 2-3 ms up to the default threshold."""

    ann_threshold: int = 20000
    nprobe: int = 32
    # `threatqa eval` gives its figures unchanged with 8-bit codes of the vectors (6 and 4 bits: worse),
    # and hybrid, lexical and abstention unchanged with 6-bit codes of the residuals in IVF lists (4 bits:
    # hybrid top-3 and top-5 worse); benchmarks/scaling.md
    codes: str = "8bit"  # of the exhaustive index
    ann_codes: str = "6bit"  # of the IVF index, whose lists hold each vector's residual from its list's centre

    def __post_init__(self) -> None:
        for codes in (self.codes, self.ann_codes):
            if codes not in CODES:
                raise ValueError(f"dense codes {codes!r} are not one of {sorted(CODES)}")


# windows: a filter that keeps at most this many of an approximate (IVF) index probes every list, so its
# search is exhaustive over the chosen windows' codes, as an index of only those windows would be; more,
# and lists are probed in proportion to how few windows are chosen (the search then is approximate)
EXACT_SUBSET = 20_000
# windows of the labels' own exhaustive indexes (DensePart), all labels together: about 77 MB of 8-bit codes
# at 384 dimensions; and the most parts whose searches are merged (beyond, the IVF lists are probed instead)
PART_INDEX_BUDGET = 200_000
MERGED_PARTS = 16


class _Bitmap:
    """A FAISS selector of windows from their packed bitmap (one bit a window, little bit order)."""

    def __init__(self, bits: np.ndarray, windows: int) -> None:
        import faiss

        self.bits = bits  # kept alive: FAISS reads it during the search
        self.selector = faiss.IDSelectorBitmap(windows, faiss.swig_ptr(bits))


@dataclass(frozen=True)
class DensePart:
    """One label's windows (need-to-know), made when the engine labels an index version: their bitmap,
    and, in an IVF index, for labels of at most EXACT_SUBSET windows while PART_INDEX_BUDGET lasts, an
    exhaustive index of their decoded vectors (8-bit codes fitted to them, 384 bytes a window at 384
    dimensions: cosines within about 2e-3 of the IVF codes') with their window numbers. A user's search ORs the
    bitmaps of the labels they may read, or searches their small indexes, so nothing is made or kept
    on a readable set's first question: that would make it slower than the next, which someone could
    time to learn that a user with the same groups had asked."""

    bits: np.ndarray  # uint8, packed
    count: int
    ids: np.ndarray | None = None  # int64 window numbers of `flat`'s vectors
    flat: Any = None

    @property
    def nbytes(self) -> int:
        flat = self.flat.d * self.flat.ntotal if self.flat is not None else 0  # a byte a dimension
        return self.bits.nbytes + (self.ids.nbytes if self.ids is not None else 0) + flat


class DenseIndex:
    """The window vectors of one index version, searched and scored by passage row."""

    def __init__(
        self, faiss_index: object, windows: np.ndarray, passages: int, terms: TermVectors | None = None
    ) -> None:
        import faiss

        self.faiss = faiss_index
        self.ivf = isinstance(faiss_index, faiss.IndexIVF)
        if self.ivf:  # window number -> its place in the lists, for decoding (8 bytes a window, in memory)
            faiss_index.make_direct_map()  # type: ignore[attr-defined]
        self.terms = terms
        self.windows = windows  # a window's passage row, and its start and end offsets in the passage
        self.owners = np.ascontiguousarray(windows[:, 0], dtype=np.int64)
        self.starts = np.searchsorted(self.owners, np.arange(passages + 1)).astype(np.int64)

    @classmethod
    def open(cls, folder: Path, passages: int, dimension: int) -> DenseIndex:
        import faiss

        try:
            mapped = (folder / DENSE).stat().st_size > arrays.MAP_ABOVE_BYTES
            flags = faiss.IO_FLAG_MMAP | faiss.IO_FLAG_READ_ONLY if mapped else faiss.IO_FLAG_READ_ONLY
            index = faiss.read_index(str(folder / DENSE), flags)
            if (folder / DENSE_CODES).is_file():
                read_codes(index, folder / DENSE_CODES)
            spans, counts = arrays.load(folder / WINDOWS), arrays.load(folder / WINDOW_COUNTS)
        except (RuntimeError, ValueError, OSError, brotli.error) as exc:
            raise IndexMismatch(f"{folder / DENSE} is unreadable ({exc}); rebuild with `threatqa index`") from None
        whole = index.ntotal == len(spans) == int(counts.sum()) and spans.shape[1:] == (2,) and index.d == dimension
        if not whole or len(counts) != passages or not (counts > 0).all():  # every passage has a window (`scores`)
            raise IndexMismatch(
                f"{folder / DENSE} holds {index.ntotal} vectors of dimension {index.d} for {len(spans)} windows of "
                f"{len(counts)} passages; the manifest says {passages} passages of dimension {dimension}; rebuild "
                "with `threatqa index`"
            )
        owners = np.repeat(np.arange(passages, dtype=np.int32), counts)
        return cls(index, np.column_stack([owners, spans.astype(np.int32)]), passages, TermVectors.open(folder))

    def __len__(self) -> int:
        return len(self.windows)

    @property
    def ranges(self) -> np.ndarray | None:
        """The codes' range of each dimension, (2, d): lowest value, width (None for IVF lists, whose
        codes are of residuals from their lists' centres)."""
        import faiss

        if self.ivf:
            return None
        return faiss.vector_to_array(self.faiss.sq.trained).reshape(2, -1)  # type: ignore[attr-defined]

    def window_ids(self, rows: list[int] | np.ndarray) -> np.ndarray:
        """The window numbers of the given passage rows, in row order."""
        rows = np.asarray(rows, dtype=np.int64)
        if not len(rows):
            return np.zeros(0, dtype=np.int64)
        return np.concatenate([np.arange(self.starts[r], self.starts[r + 1]) for r in rows])

    def vectors(self, window_ids: np.ndarray) -> np.ndarray:
        """Vectors of windows, decoded from their codes (so a cosine computed from them is the one a
        search of the codes gives)."""
        if not len(window_ids):
            return np.zeros((0, self.faiss.d), dtype=np.float32)  # type: ignore[attr-defined]
        return self.faiss.reconstruct_batch(np.asarray(window_ids, dtype=np.int64))  # type: ignore[attr-defined]

    def parts(self, masks: list[np.ndarray]) -> list[DensePart]:
        """The windows of each of these sets of passages (labels), as parts (DensePart): in an IVF index, the
        smallest get their own exhaustive index while PART_INDEX_BUDGET windows last, which bounds the memory."""
        parts = [self.part(mask) for mask in masks]
        budget = PART_INDEX_BUDGET
        for i in sorted(range(len(parts)), key=lambda i: parts[i].count):
            if self.ivf and parts[i].count <= min(EXACT_SUBSET, budget):
                parts[i] = self._indexed(parts[i])
                budget -= parts[i].count
        return parts

    def part(self, mask: np.ndarray) -> DensePart:
        """The windows of the passages where mask is True, as one label's part (its bitmap)."""
        marks = mask[self.owners]
        return DensePart(np.packbits(marks, bitorder="little"), int(marks.sum()))

    def _indexed(self, part: DensePart) -> DensePart:
        """The part with an exhaustive index of its windows' decoded vectors."""
        import faiss

        ids = np.flatnonzero(np.unpackbits(part.bits, count=len(self), bitorder="little")).astype(np.int64)
        vectors = self.vectors(ids)
        flat = faiss.IndexScalarQuantizer(self.faiss.d, faiss.ScalarQuantizer.QT_8bit, faiss.METRIC_INNER_PRODUCT)  # type: ignore[attr-defined]
        flat.train(vectors)
        flat.add(vectors)
        return DensePart(part.bits, part.count, ids, flat)

    def search(
        self, vector: np.ndarray, k: int, mask: np.ndarray | None = None, parts: tuple[DensePart, ...] | None = None
    ) -> tuple[np.ndarray, np.ndarray]:
        """Rows and scores (best window's cosine) of the k best passages; only mask's rows when given,
        which, when `parts` is given, are exactly the passages of those parts (a readable set)."""
        import faiss

        use_threads(_question_threads)
        params, chosen = None, len(self)
        if mask is not None:
            if parts is not None:
                chosen = sum(part.count for part in parts)
                small = len(parts) <= MERGED_PARTS and all(part.flat is not None for part in parts)
                if self.ivf and chosen <= EXACT_SUBSET and small:
                    return self._parts(vector, k, parts)
                bits = np.bitwise_or.reduce([part.bits for part in parts])  # chosen > 0 windows: parts
            else:
                marks = mask[self.owners]
                chosen, bits = int(marks.sum()), np.packbits(marks, bitorder="little")
            selector = _Bitmap(bits, len(self))  # made for this question: see DensePart
            if self.ivf:
                # few windows chosen: every list, an exhaustive search of their codes; more: the fewer chosen,
                # the more lists, about as many chosen windows as an unfiltered search sees
                nprobe = -(-self.faiss.nprobe * len(self) // max(chosen, 1))
                nprobe = self.faiss.nlist if chosen <= EXACT_SUBSET else min(self.faiss.nlist, nprobe)
                params = faiss.SearchParametersIVF(sel=selector.selector, nprobe=nprobe)
            else:
                params = faiss.SearchParameters(sel=selector.selector)
        wanted = k * _WINDOWS_PER_PASSAGE
        while True:
            fetch = min(wanted, chosen)
            if not fetch:
                return np.zeros(0, dtype=np.int64), np.zeros(0, dtype=np.float32)
            scores, ids = self.faiss.search(vector, fetch, params=params)  # type: ignore[attr-defined]
            found = ids[0] >= 0
            rows, best = _best_by_owner(self.owners[ids[0][found]], scores[0][found])
            # done with k passages, or when FAISS had no more to give (a filter, or the IVF lists probed)
            if len(rows) >= k or fetch == chosen or found.sum() < fetch:
                return rows[:k], best[:k]
            wanted *= 4

    def _parts(self, vector: np.ndarray, k: int, parts: tuple[DensePart, ...]) -> tuple[np.ndarray, np.ndarray]:
        """The k best passages of the parts' windows, each part's exhaustive index searched and the
        results merged: the best `fetch` windows of a union are among its parts' best `fetch`."""
        total, wanted = sum(part.count for part in parts), k * _WINDOWS_PER_PASSAGE
        while True:
            fetch = min(wanted, total)
            found = [(part.flat.search(vector, min(fetch, part.count)), part.ids) for part in parts if part.count]
            scores = np.concatenate([s[0] for (s, _i), _ids in found] or [np.zeros(0, np.float32)])
            ids = np.concatenate([ids[i[0]] for (_s, i), ids in found] or [np.zeros(0, np.int64)])
            order = np.argsort(-scores, kind="stable")[:fetch]
            rows, best = _best_by_owner(self.owners[ids[order]], scores[order])
            if len(rows) >= k or fetch == total:
                return rows[:k], best[:k]
            wanted *= 4

    def scores(self, vector: np.ndarray, rows: list[int]) -> np.ndarray:
        """Each row's best window cosine with the (1, d) vector, as a search of the codes computes it."""
        if not rows:
            return np.zeros(0, dtype=np.float32)
        ids = self.window_ids(rows)
        cosines = self.vectors(ids) @ vector[0]
        return np.maximum.reduceat(cosines, _offsets(self.starts, rows))  # every passage has a window


class TermVectors:
    """The vectors of the corpus's content words (each embedded alone), looked up by word.

    Saved as int8, each vector scaled so that its largest component is 127, and made unit length again
    as it is read: cosines move by about 1e-3, in a quarter of float32's bytes. Saving what was read
    gives the same codes, so words an incremental build carries over do not drift.

    In the file the codes are a row per dimension: the dimension's median code, then each word's code
    less it (modulo 256, so exact). A dimension's codes spread about their own middle, so these rows are
    small numbers that compress (`arrays.save`) to 0.68 of the codes (real word vectors, 1,872 words of
    all-MiniLM-L6-v2; 0.90 a word at a time, 0.79 by dimension without the median): the vocabulary's
    vectors are most of a small index (issue 17)."""

    def __init__(self, words: list[str], vectors: np.ndarray) -> None:
        self.words = words
        self.vectors = vectors
        self.position = {word: i for i, word in enumerate(words)}

    @classmethod
    def open(cls, folder: Path) -> TermVectors | None:
        if not (folder / TERMS).is_file():
            return None
        try:
            words = json.loads((folder / TERMS).read_text(encoding="utf-8"))
            codes = _from_rows(arrays.load(folder / TERM_VECTORS))
            if len(codes) != len(words):
                raise ValueError(f"{len(codes)} vectors for {len(words)} words")
            return cls(words, decode_int8(codes))
        except (OSError, ValueError) as exc:
            raise IndexMismatch(f"{folder / TERMS} is unreadable ({exc}); rebuild with `threatqa index`") from None

    def of(self, words: list[str]) -> np.ndarray:
        """Vectors of the given words (those the corpus has; the others are skipped)."""
        rows = [self.position[w] for w in words if w in self.position]
        return np.asarray(self.vectors[rows], dtype=np.float32)

    def codes(self) -> np.ndarray:
        """The int8 codes the vectors are saved as (words x dimensions)."""
        return encode_int8(np.asarray(self.vectors, dtype=np.float32))

    def save(self, folder: Path) -> None:
        (folder / TERMS).write_text(json.dumps(self.words, ensure_ascii=False), encoding="utf-8")
        arrays.save(folder / TERM_VECTORS, _to_rows(self.codes()))


def _to_rows(codes: np.ndarray) -> np.ndarray:
    """int8 codes (words x dimensions) as rows by dimension: its median code, then each word's less it."""
    middle = np.median(codes, axis=0).round().astype(np.int8) if len(codes) else np.zeros(codes.shape[1], np.int8)
    return np.column_stack([middle, (codes.T.astype(np.int16) - middle[:, None]).astype(np.int8)])  # wraps: exact


def _from_rows(rows: np.ndarray) -> np.ndarray:
    """`_to_rows`'s codes back (words x dimensions)."""
    if rows.dtype != np.int8 or rows.ndim != 2 or rows.shape[1] < 1:
        raise ValueError(f"term vectors of shape {rows.shape} and type {rows.dtype}")
    return np.ascontiguousarray((rows[:, 1:].astype(np.int16) + rows[:, :1]).astype(np.int8).T)


def encode_int8(vectors: np.ndarray) -> np.ndarray:
    """Each row scaled so that its largest magnitude is 127, rounded (a zero row stays zero)."""
    largest = np.abs(vectors).max(axis=1, keepdims=True) if len(vectors) else np.ones((0, 1), dtype=np.float32)
    return np.round(vectors * (127 / np.maximum(largest, 1e-30))).astype(np.int8)


def decode_int8(codes: np.ndarray) -> np.ndarray:
    """Unit rows from `encode_int8`'s codes (a vector's direction is all a cosine reads)."""
    vectors = codes.astype(np.float32)
    norms = np.linalg.norm(vectors, axis=1, keepdims=True)
    return vectors / np.maximum(norms, 1e-30)


def term_match(question: np.ndarray, weights: np.ndarray, passage: np.ndarray) -> float:
    """How well a passage's words match the question's: each question word's best cosine with a
    word of the passage (1 for the word itself; 0 when negative), averaged with the words' weights.
    `question` and `passage` are unit vectors of words, one per row."""
    if not len(question) or not len(passage) or weights.sum() <= 0:
        return 0.0
    best = np.clip((question @ passage.T).max(axis=1), 0.0, 1.0)
    return float(weights @ best / weights.sum())


def _offsets(starts: np.ndarray, rows: list[int]) -> np.ndarray:
    """Where each row's windows begin in the concatenation of the rows' windows."""
    sizes = starts[np.asarray(rows) + 1] - starts[np.asarray(rows)]
    return np.concatenate([[0], np.cumsum(sizes)[:-1]]).astype(np.int64)


def _best_by_owner(owners: np.ndarray, scores: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Passage rows in order of their best window (FAISS returns windows best first)."""
    rows, first = np.unique(owners, return_index=True)
    order = np.argsort(first, kind="stable")
    return rows[order].astype(np.int64), scores[first[order]]


@dataclass(frozen=True)
class Carried:
    """Vectors an incremental build carries over: the previous version's dense index, and each new
    window's number in it (-1 for a window embedded anew)."""

    previous: DenseIndex
    ids: np.ndarray


def build_dense(vectors: np.ndarray, config: DenseConfig = DenseConfig(), carried: Carried | None = None) -> object:
    """A FAISS inner-product index (== cosine on normalised vectors) of scalar-quantiser codes: scanned
    whole while small, IVF lists above `config.ann_threshold`.

    IVF with 8-bit scalar quantisation measured better than HNSW here (benchmarks/ann.py, 1M
    clustered 384-d vectors): similar recall@10 at a few ms, a quarter of the memory, a faster build.
    The codes replace float vectors everywhere (issue 17: 1,536 bytes a window in float32 were 10x
    the text they stand for). Vectors carried over from the previous version (decoded from its codes)
    get the same codes again where the previous quantiser can be kept (`_exhaustive`, `_ivf_again`)."""
    import faiss

    n, dim = vectors.shape
    if n <= config.ann_threshold:
        return _exhaustive(vectors, config, carried)
    nlist = ann_lists(n)
    kind = getattr(faiss.ScalarQuantizer, CODES[config.ann_codes])
    index = faiss.IndexIVFScalarQuantizer(faiss.IndexFlatIP(dim), dim, nlist, kind, faiss.METRIC_INNER_PRODUCT)
    index.nprobe = min(config.nprobe, nlist)
    old = carried.previous.faiss if carried is not None and carried.previous.ivf else None
    if old is not None and (old.nlist, old.d, old.sq.qtype) == (nlist, dim, kind):  # type: ignore[attr-defined]
        if _ivf_again(index, vectors, carried):  # type: ignore[arg-type]
            return index
        index.reset()
        index.quantizer.reset()
        index.is_trained = False
    # k-means on a sample: 64 points a list is plenty, and bounds the training time at any size
    sample = np.random.default_rng(0).choice(n, min(n, 64 * nlist), replace=False)
    index.cp.niter = 10
    index.train(vectors[np.sort(sample)])
    index.add(vectors)
    return index


def _exhaustive(vectors: np.ndarray, config: DenseConfig, carried: Carried | None) -> object:
    """An exhaustively scanned index of codes, on the previous version's ranges when they hold every
    vector (carried-over vectors then keep their codes exactly), else on the lattice (`lattice_ranges`)."""
    import faiss

    dim = vectors.shape[1]
    index = faiss.IndexScalarQuantizer(dim, getattr(faiss.ScalarQuantizer, CODES[config.codes]),
                                       faiss.METRIC_INNER_PRODUCT)  # fmt: skip
    ranges = carried.previous.ranges if carried is not None else None
    if ranges is None or ranges.shape != (2, dim) or not _holds(ranges, vectors):
        ranges = lattice_ranges(vectors, STEPS[config.codes])
    faiss.copy_array_to_vector(np.ascontiguousarray(ranges, dtype=np.float32).ravel(), index.sq.trained)
    index.is_trained = True
    index.add(vectors)
    return index


# share of the new vectors' residual components that may fall outside the kept ranges (and be clipped)
# before the lists are trained anew: 3x what a fresh training on a sample leaves outside of the vectors not in
# it (3e-5: 200k clustered 64-d vectors, 2,048 lists)
OUTSIDE_KEPT_RANGES = 1e-4


def _ivf_again(index: Any, vectors: np.ndarray, carried: Carried) -> bool:
    """Fill `index` (untrained) on the previous version's list centres and residual ranges, each
    carried-over vector in the list it was in: its residual is then the one decoded, and gets the same
    code. False (nothing added) when the new vectors do not fit those ranges. (Trained anew, the centres
    and ranges move, and carried vectors drift a little at every build: 0.0017 rms in cosine after one
    build, 0.0038 after five, at 6 bits on 30k clustered vectors; so lists are trained anew only when
    their number changes, as the corpus quadruples, or when new vectors fall outside the ranges.)"""
    import faiss

    old = carried.previous.faiss
    index.quantizer.add(old.quantizer.reconstruct_n(0, old.nlist))  # type: ignore[attr-defined]
    low, width = faiss.vector_to_array(old.sq.trained).reshape(2, -1)  # type: ignore[attr-defined]
    lists = index.quantizer.search(vectors, 1)[1][:, 0]
    fresh = carried.ids < 0
    residuals = vectors[fresh] - index.quantizer.reconstruct_n(0, old.nlist)[lists[fresh]]
    if fresh.any() and np.mean((residuals < low) | (residuals > low + width)) > OUTSIDE_KEPT_RANGES:
        return False
    faiss.copy_array_to_vector(np.concatenate([low, width]).astype(np.float32), index.sq.trained)
    index.is_trained = True
    # the direct map holds each window's list in the high 32 bits of its place
    places = faiss.vector_to_array(old.direct_map.array)  # type: ignore[attr-defined]
    lists[~fresh] = places[carried.ids[~fresh]] >> 32
    index.add_core(len(vectors), faiss.swig_ptr(vectors), None, faiss.swig_ptr(np.ascontiguousarray(lists)))
    return True


def lattice_ranges(vectors: np.ndarray, steps: int) -> np.ndarray:
    """Each dimension's range for the codes, (2, d): lowest value, width. The step (width / steps) is a
    power of two and the lowest value a multiple of it, so decoded values lie on one lattice whatever
    the data: an incremental build re-encodes the vectors it carries over (decoded) to the same values,
    where ranges fitted to the data would move them a little at every build (5x the error after 5 builds
    of 30k vectors). Costs up to one bit of precision against the data's own range."""
    low, high = vectors.min(axis=0).astype(np.float64), vectors.max(axis=0).astype(np.float64)
    # steps - 1: the lowest value rounds down by up to a step, and the highest must still fit. The step is
    # at least 1 / (steps + 1) (a width of about 1: unit vectors' components span less), so indexes of any
    # documents share one lattice and code a vector alike: an index of a user's readable documents alone
    # scores as the whole index does for them (need-to-know, tests/test_policy.py)
    step = 2.0 ** np.ceil(np.log2(np.maximum(high - low, 2.0**-20) / (steps - 1)))
    step = np.maximum(step, 2.0 ** np.floor(np.log2(1.0 / (steps + 1))))
    low = np.floor(low / step) * step
    return np.stack([low, step * steps]).astype(np.float32)


def _holds(ranges: np.ndarray, vectors: np.ndarray) -> bool:
    """Whether every vector lies within the ranges (lowest value, width) of each dimension."""
    low, width = ranges
    return bool((vectors.min(axis=0) >= low).all() and (vectors.max(axis=0) <= low + width).all())


def write_dense(
    folder: Path,
    vectors: np.ndarray,
    windows: np.ndarray,
    passage_starts: np.ndarray,
    config: DenseConfig,
    carried: Carried | None = None,
) -> None:
    """The dense files into folder, from the windows' vectors and their (passage row, start, end) in the
    document, given each passage's start (`carried`: see build_dense). An index too large to read in
    (arrays.MAP_ABOVE_BYTES) is written whole to dense.faiss, so that it can be memory-mapped."""
    import faiss

    index = build_dense(vectors, config, carried)
    if index.sa_code_size() * index.ntotal <= arrays.MAP_ABOVE_BYTES:  # type: ignore[attr-defined]
        write_codes(index, folder / DENSE_CODES)
        index.reset()  # type: ignore[attr-defined]
    faiss.write_index(index, str(folder / DENSE))
    rows = windows[:, 0]
    arrays.save(folder / WINDOWS, _narrow(windows[:, 1:] - passage_starts[rows][:, None]))
    arrays.save(folder / WINDOW_COUNTS, _narrow(np.bincount(rows, minlength=len(passage_starts))))


def _narrow(values: np.ndarray) -> np.ndarray:
    """Non-negative integers as the narrowest unsigned type that holds them."""
    largest = int(values.max(initial=0))
    return values.astype(next(t for t in (np.uint8, np.uint16, np.uint32, np.uint64) if largest <= np.iinfo(t).max))


# windows a frame of dense.codes. Brotli at quality 1 takes scalar-quantiser codes kept a byte a component to
# about their entropy: 6-bit residual codes of real window vectors (all-MiniLM-L6, 19k windows of prose)
# carry 4.6 bits a component and took 222 bytes a window instead of 288 packed (clustered synthetic vectors:
# 5.0 bits, 240 bytes); 8-bit codes of real vectors on the lattice, 182 instead of 384. Quality 1 compressed
# smaller than 3 or 5, and fastest (0.6 s for 260k windows). The price is at opening: reading them in took
# 0.5-0.6 s at 98k passages (260k windows, 2 threads), so open_index 0.6-1.1 s instead of 0.24 (2 cores
# shared with other jobs)
CODE_FRAME = 1 << 14
CODE_QUALITY = 1
CODE_THREADS = min(4, os.cpu_count() or 1)


def write_codes(index: Any, path: Path) -> None:
    """The index's codes into `path`, window by window (FAISS's standalone codes: the list number, when
    IVF, then the code), each component a byte, in frames of CODE_FRAME windows compressed alone (Brotli),
    each after its size in 4 bytes."""
    codes, coarse, bits = _codes(index), _coarse_bytes(index), index.sq.bits
    with open(path, "wb") as out:
        for start in range(0, len(codes), CODE_FRAME):
            frame = codes[start : start + CODE_FRAME]
            records = np.empty((len(frame), coarse + index.d), dtype=np.uint8)
            records[:, :coarse] = frame[:, :coarse]
            _unpack_bits(frame[:, coarse:], bits, records[:, coarse:])
            data = brotli.compress(records.tobytes(), quality=CODE_QUALITY)
            out.write(struct.pack("<I", len(data)) + data)


def read_codes(index: Any, path: Path) -> None:
    """Add the codes `write_codes` wrote to the (empty) index; damage raises ValueError or brotli.error.
    Frames are decompressed and packed on CODE_THREADS threads (both run outside the GIL), and added in
    order: 0.52-0.57 s for 260k windows, 0.88-1.0 s on one thread (2 cores)."""
    coarse, pending = _coarse_bytes(index), deque()  # type: ignore[var-annotated]
    with open(path, "rb") as handle, ThreadPoolExecutor(CODE_THREADS, thread_name_prefix="threatqa-codes") as pool:
        while head := handle.read(4):
            size = struct.unpack("<I", head)[0] if len(head) == 4 else -1
            data = handle.read(max(size, 0))
            if len(data) != size:
                raise ValueError(f"{path.name} is cut short")
            pending.append(pool.submit(_packed, index, data, coarse))
            if len(pending) > CODE_THREADS:  # a few frames in memory at a time
                index.add_sa_codes(pending.popleft().result())
        while pending:
            index.add_sa_codes(pending.popleft().result())


def _packed(index: Any, frame: bytes, coarse: int) -> np.ndarray:
    """A frame of `write_codes` as standalone codes (its records: the list number, then a byte a component)."""
    inflate = brotli.Decompressor()  # a Decompressor releases the GIL, brotli.decompress does not
    data = inflate.process(frame)
    if not inflate.is_finished():
        raise ValueError("a frame of the codes ends early")
    records = np.frombuffer(data, dtype=np.uint8).reshape(-1, coarse + index.d)
    codes = np.empty((len(records), index.sa_code_size()), dtype=np.uint8)
    codes[:, :coarse] = records[:, :coarse]
    _pack_bits(records[:, coarse:], index.sq.bits, codes[:, coarse:])
    if coarse and (_list_numbers(codes[:, :coarse]) >= index.nlist).any():  # FAISS would write out of bounds
        raise ValueError("a code names a list the index does not have")
    return codes


def _codes(index: Any) -> np.ndarray:
    """Every window's standalone code, (windows, sa_code_size), in window order."""
    import faiss

    if not isinstance(index, faiss.IndexIVF):
        return faiss.vector_to_array(index.codes).reshape(index.ntotal, index.code_size)
    coarse, lists = _coarse_bytes(index), index.invlists
    out = np.empty((index.ntotal, index.sa_code_size()), dtype=np.uint8)
    for number in range(index.nlist):
        if size := lists.list_size(number):
            ids = faiss.rev_swig_ptr(lists.get_ids(number), size)
            out[ids, coarse:] = faiss.rev_swig_ptr(lists.get_codes(number), size * index.code_size).reshape(size, -1)
            out[ids, :coarse] = np.array([number], dtype="<u8").view(np.uint8)[:coarse]  # little-endian, as FAISS
    return out


def _coarse_bytes(index: Any) -> int:
    """Bytes of the list number at the start of a standalone code: 0 for an exhaustive index."""
    import faiss

    return int(index.coarse_code_size()) if isinstance(index, faiss.IndexIVF) else 0


def _list_numbers(coarse: np.ndarray) -> np.ndarray:
    return (coarse.astype(np.int64) << (8 * np.arange(coarse.shape[1]))).sum(axis=1)


def ann_lists(n: int) -> int:
    """IVF lists for n vectors: about 4 * sqrt(n), a power of two up to 4096 (fewer for a tiny
    corpus: k-means wants about 40 points a list)."""
    return int(max(1, min(4096, 2 ** round(np.log2(4 * np.sqrt(n))), n // 40)))


# Scalar-quantiser codes as FAISS packs them: a little-endian stream of `bits` a component, so that 8
# components take `bits` whole bytes; the kernels move 8 at a time through one 64-bit word (twice as fast
# as a component at a time: 0.18 s for 260k windows of 384 6-bit components)


@njit(nogil=True, cache=True)
def _pack_bits(values: np.ndarray, bits: int, out: np.ndarray) -> None:
    """Rows of components (a byte each, below 2**bits) into rows of packed codes."""
    dim, size = values.shape[1], out.shape[1]
    for row in range(values.shape[0]):
        for group in range((dim + 7) // 8):
            word = np.uint64(0)
            for k in range(min(8, dim - 8 * group)):
                word |= np.uint64(values[row, 8 * group + k]) << np.uint64(bits * k)
            for b in range(min(bits, size - bits * group)):
                out[row, bits * group + b] = (word >> np.uint64(8 * b)) & np.uint64(255)


@njit(nogil=True, cache=True)
def _unpack_bits(codes: np.ndarray, bits: int, out: np.ndarray) -> None:
    """`_pack_bits` undone: rows of packed codes into rows of components, a byte each."""
    dim, size, mask = out.shape[1], codes.shape[1], np.uint64((1 << bits) - 1)
    for row in range(codes.shape[0]):
        for group in range((dim + 7) // 8):
            word = np.uint64(0)
            for b in range(min(bits, size - bits * group)):
                word |= np.uint64(codes[row, bits * group + b]) << np.uint64(8 * b)
            for k in range(min(8, dim - 8 * group)):
                out[row, 8 * group + k] = (word >> np.uint64(bits * k)) & mask


# FAISS threads per question (0: OpenMP's default). An OpenMP thread count belongs to the thread
# that sets it, and questions are searched on whichever thread the server gives them, so each
# search applies it (DenseIndex.search); without that, every thread but the one that set it ran
# FAISS on all cores.
_question_threads = 0


def set_compute_threads(threads: int) -> None:
    """CPU threads FAISS (OpenMP) and PyTorch, when loaded, use for a question, process-wide.

    A server answers `workers` questions at once: PyTorch, FAISS (and ONNX Runtime, whose query
    session is made with its own count) do best with one thread each on a 2-core machine at two
    questions at once (benchmarks/threads.py). PyTorch and FAISS share one OpenMP runtime, which
    PyTorch sets to its count in each thread it runs on, hence one count for the two."""
    global _question_threads
    if (torch := sys.modules.get("torch")) is not None:
        torch.set_num_threads(threads)
    _question_threads = threads
    use_threads(threads)


def use_threads(threads: int) -> None:
    """FAISS on this thread uses `threads` threads (0: leave it as it is)."""
    import faiss

    if threads and faiss.omp_get_max_threads() != threads:
        faiss.omp_set_num_threads(threads)


@contextlib.contextmanager
def compute_threads(threads: int) -> Iterator[None]:
    """The block runs with `threads` compute threads (an index build uses every core); restored after.
    FAISS's count is this thread's, so questions answered meanwhile on other threads keep theirs."""
    import faiss

    torch = sys.modules.get("torch")
    before = faiss.omp_get_max_threads(), torch.get_num_threads() if torch is not None else None
    if torch is not None:
        torch.set_num_threads(threads)
    use_threads(threads)
    try:
        yield
    finally:
        if torch is not None:
            torch.set_num_threads(before[1])
        use_threads(before[0])
