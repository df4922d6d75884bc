"""The character view of the lexical index: BM25 of character 3-5-grams inside words, in a
passage and in its best sentence, for the word view's best candidates only.

It keeps the words, not their n-grams. The n-grams of a text are its words' n-grams (char_wb
n-grams never cross words), so the view stores each passage as the sequence of its words' ids
(variable-length bytes, the most frequent words in one byte) and each distinct word's n-gram
hashes once, with the number of sentences and of passages that have each n-gram (for the IDF).
A question's score in a candidate is worked out from those at query time, exactly as it was
when every (sentence, n-gram) pair was stored with its weight (index schema 4 and 5): the same
hashes, counts, lengths and BM25, in about a fortieth of the bytes (0.3x the text instead of
about 20x). Candidates are read with pread(2), as before, so the server's memory does not grow
with every candidate ever read.

Files in the bm25/ folder:
    char-tokens.bin        each sentence's word ids (LEB128 varints), sentence after sentence
    char-indptr.npy        byte offsets of the sentences in it (sentences + 1)
    char-word-indptr.npy, char-word-ngrams.npy   each word id's n-gram hashes, repeats kept (CSR)
    char-ngrams.npy, char-df.npy   the n-gram hashes the corpus has, ascending, and for each the
                           sentences and passages that have it
    char.json              sentences, passages, and their mean lengths in n-grams
(each `.npy` array may be stored compressed, as `.npy.br`: arrays.py)
"""

from __future__ import annotations

import functools
import json
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

import numpy as np
from numba import njit, types
from scipy import sparse
from sklearn.feature_extraction.text import HashingVectorizer
from sklearn.utils import murmurhash3_32

from threatqa import arrays
from threatqa.lexical_bm25 import _TOKEN, K1, B, _idf, _sum_by_passage
from threatqa.lexical_subset import CharStatistics

CHAR_NGRAMS = (3, 5)  # n-gram sizes, inclusive
HASH_BITS = 20  # n-gram hashes are below 2**20


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


def _counts_of_words(texts: list[list[str]]) -> sparse.csr_matrix:
    """What `_CHARS.transform` gives for texts given as their words (n-gram counts, texts by hash)."""
    hashes = [_word_ngrams(word) for words in texts for word in words]
    sizes = [sum(len(_word_ngrams(word)) for word in words) for words in texts]
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


# ----------------------------------------------------------------------------- query-time kernel
# pread(2) from the C library, called from compiled code without the GIL (resolved by name, so the
# compiled kernel can be cached); the buffer's address is passed as an integer
_PREAD = types.ExternalFunction("pread", types.intp(types.intc, types.uintp, types.uintp, types.int64))


@njit(nogil=True, cache=True)
def _slot_table(hashes):
    """An open-addressing table from the question's n-gram hashes (distinct) to their positions
    (keys -1 where empty): a few KB that stay in the processor's cache."""
    size = 64
    while size < 4 * len(hashes):
        size *= 2
    keys, slots = np.full(size, -1, np.int32), np.zeros(size, np.int64)
    for i in range(len(hashes)):
        at = (hashes[i] * 2654435761) & (size - 1)
        while keys[at] != -1:
            at = (at + 1) & (size - 1)
        keys[at], slots[at] = hashes[i], i
    return keys, slots


@njit(nogil=True, cache=True, inline="always")
def _varint(data, at):
    """The LEB128 varint at data[at] (a word id of char-tokens.bin) and the position after it."""
    word, shift = np.int64(0), 0
    while True:
        byte = data[at]
        at += 1
        word |= (np.int64(byte) & 0x7F) << shift
        if byte < 0x80:
            return word, at
        shift += 7


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
                word, at = _varint(tokens, at)
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


@njit(nogil=True, cache=True)
def _char_kernel(fd, indptr, firsts, lasts, word_indptr, word_ngrams, hashes, in_sentence, in_passage,
                 means, address, buffer):  # fmt: skip
    """For passages whose sentences are firsts[i] .. lasts[i] - 1: each passage's BM25 of the
    question's n-grams and its best sentence's. hashes are the question's n-grams (distinct),
    in_sentence and in_passage their count x IDF over sentences and over passages; means the mean
    sentence and passage lengths in n-grams. Each passage's word ids are read from the file fd into
    buffer (at address), decoded, and their n-grams counted where the question has them. Returns
    the scores with a status: 0, -1 when a read failed or came short, -2 when a passage does not fit
    the buffer, -3 when a word id is out of range (a damaged file)."""
    keys, slots = _slot_table(hashes)
    mask = len(keys) - 1
    tf_sentence, tf_passage = np.zeros(len(hashes)), np.zeros(len(hashes))
    in_this, in_all = np.zeros(len(hashes), np.int64), np.zeros(len(hashes), np.int64)  # the n-grams seen
    norm_sentence, norm_passage = K1 * B / max(means[0], 1e-9), K1 * B / max(means[1], 1e-9)
    passages, best = np.zeros(len(firsts)), np.zeros(len(firsts))
    words = len(word_indptr) - 1
    for p in range(len(firsts)):
        first, size = indptr[firsts[p]], indptr[lasts[p]] - indptr[firsts[p]]
        if size > len(buffer):
            return passages, best, -2
        done = 0
        while done < size:
            got = _PREAD(fd, address + done, size - done, first + done)
            if got <= 0:
                return passages, best, -1
            done += got
        passage_length, seen = 0.0, 0
        for s in range(firsts[p], lasts[p]):
            at, end, length, found = indptr[s] - first, indptr[s + 1] - first, 0.0, 0
            while at < end:
                word, at = _varint(buffer, at)
                if word >= words:
                    return passages, best, -3
                start, stop = np.int64(word_indptr[word]), np.int64(word_indptr[word + 1])
                length += stop - start
                for j in range(start, stop):
                    ngram = word_ngrams[j]
                    slot = (ngram * 2654435761) & mask
                    while keys[slot] != ngram and keys[slot] != -1:
                        slot = (slot + 1) & mask
                    if keys[slot] == ngram:
                        i = slots[slot]
                        if tf_sentence[i] == 0.0:
                            in_this[found] = i
                            found += 1
                        tf_sentence[i] += 1.0
            score, norm = 0.0, K1 * (1 - B) + norm_sentence * length
            for f in range(found):
                i = in_this[f]
                tf = tf_sentence[i]
                score += in_sentence[i] * tf / (tf + norm)
                if tf_passage[i] == 0.0:
                    in_all[seen] = i
                    seen += 1
                tf_passage[i] += tf
                tf_sentence[i] = 0.0
            best[p] = max(best[p], score)
            passage_length += length
        score, norm = 0.0, K1 * (1 - B) + norm_passage * passage_length
        for f in range(seen):
            i = in_all[f]
            tf = tf_passage[i]
            score += in_passage[i] * tf / (tf + norm)
            tf_passage[i] = 0.0
        passages[p] = score
    return passages, best, 0


@njit(cache=True)
def _varints(ids, out):
    """ids (non-negative) as LEB128 varints into out; returns each id's size in bytes."""
    sizes = np.empty(len(ids), np.int8)
    at = 0
    for i in range(len(ids)):
        value, start = ids[i], at
        while value >= 0x80:
            out[at] = (value & 0x7F) | 0x80
            value >>= 7
            at += 1
        out[at] = value
        at += 1
        sizes[i] = at - start
    return sizes


def _smallest_uint(values: np.ndarray) -> np.ndarray:
    """values (non-negative integers) in the smallest of uint16, uint32 and int64 that holds them."""
    top = int(values.max(initial=0))
    return values.astype(next(t for t in (np.uint16, np.uint32, np.int64) if top <= np.iinfo(t).max))


@dataclass(frozen=True)
class CharView:
    """BM25 of character n-grams in passages and in their sentences, worked out at query time from
    the passages' words (see the module's docstring)."""

    TOKENS = "char-tokens.bin"
    META = "char.json"

    file: BinaryIO  # TOKENS, unbuffered
    indptr: np.ndarray  # sentences + 1: sentence i's word ids are bytes [indptr[i], indptr[i + 1])
    word_indptr: np.ndarray  # word ids + 1 (memory-mapped)
    word_ngrams: np.ndarray  # int32 n-gram hashes of each word, repeats kept (memory-mapped)
    ngrams: np.ndarray  # int32, the n-grams of the corpus, ascending (memory-mapped)
    df: np.ndarray  # (n-grams, 2): sentences and passages that have each (memory-mapped)
    sentences: int
    passages: int
    means: np.ndarray  # float64: mean sentence and passage lengths, in n-grams

    @classmethod
    def load(cls, folder: Path) -> CharView:
        meta = json.loads((folder / cls.META).read_text())
        file = (folder / cls.TOKENS).open("rb", buffering=0)
        indptr = arrays.load(folder / "char-indptr.npy").astype(np.int64)
        if os.fstat(file.fileno()).st_size != int(indptr[-1]):
            file.close()
            raise ValueError(f"{file.name} does not hold the {int(indptr[-1])} bytes its index says")
        mapped = (arrays.load(folder / f"char-{part}.npy") for part in ("word-indptr", "word-ngrams", "ngrams", "df"))
        means = np.array(meta["means"], dtype=np.float64)
        return cls(file, indptr, *mapped, sentences=int(meta["sentences"]), passages=int(meta["passages"]),
                   means=means)  # fmt: skip

    def largest(self, firsts: np.ndarray, lasts: np.ndarray) -> int:
        """The most bytes of any of these passages (sentences firsts[i] .. lasts[i] - 1)."""
        return int((self.indptr[lasts] - self.indptr[firsts]).max(initial=0))

    def weights(
        self, query: tuple[np.ndarray, np.ndarray], subset: CharStatistics | None = None
    ) -> tuple[np.ndarray, np.ndarray]:
        """Each of the question's n-grams' count x IDF, over sentences and over passages (of a subset's
        passages only, when given)."""
        hashes, counts = query
        df = np.zeros((len(hashes), 2), np.int64)  # an n-gram the corpus lacks is in no text
        if len(self.ngrams):
            at = np.minimum(np.searchsorted(self.ngrams, hashes), len(self.ngrams) - 1)
            known = self.ngrams[at] == hashes
            df[known] = (self.df if subset is None else subset.df)[at[known]]
        sentences, passages = (self.sentences, self.passages) if subset is None else (subset.sentences, subset.passages)
        return counts * _idf(df[:, 0], sentences), counts * _idf(df[:, 1], passages)

    def counter(self, firsts: np.ndarray, lasts: np.ndarray) -> Callable[[np.ndarray], tuple[np.ndarray, int]]:
        """A function of passage rows (sentences firsts[row] .. lasts[row] - 1) giving each n-gram's
        sentences and passages among them, and their n-gram total (lexical_subset.parts)."""
        tokens = np.fromfile(self.file.name, dtype=np.uint8)
        positions = np.searchsorted(self.ngrams, self.word_ngrams)  # every word's n-grams are the corpus's

        def count(rows: np.ndarray) -> tuple[np.ndarray, int]:
            return _char_df(tokens, self.indptr, firsts, lasts, rows, self.word_indptr, positions, len(self.ngrams))

        return count

    def scores(
        self,
        query: tuple[np.ndarray, np.ndarray],
        firsts: np.ndarray,
        lasts: np.ndarray,
        buffer: np.ndarray,
        subset: CharStatistics | None = None,
    ) -> tuple[np.ndarray, np.ndarray]:
        """For passages whose sentences are firsts[i] .. lasts[i] - 1: the BM25 of the question's
        character n-grams (query: their hashes and counts) in each passage and in its best sentence.
        Each passage is read into buffer (bytes, as many as `largest` says), reused from query to
        query, and scored there while it is in the processor's cache. With a subset's statistics, BM25
        is that of an index of its passages alone."""
        in_sentence, in_passage = self.weights(query, subset)
        passages, best, status = _char_kernel(
            self.file.fileno(), self.indptr, firsts, lasts, self.word_indptr, self.word_ngrams,
            query[0].astype(np.int32), in_sentence, in_passage, self.means if subset is None else subset.means,
            buffer.ctypes.data, buffer,
        )  # fmt: skip
        if status == -2:
            raise ValueError(f"a buffer of {len(buffer)} bytes is too small for these passages")
        if status == -3:
            raise ValueError(f"{self.file.name} names a word the index does not have")
        if status:
            raise OSError(f"{self.file.name}: short read")
        return passages, best


class CharWriter:
    """A character view being built a batch of passages at a time: the sentences' words get
    provisional ids (in order of first appearance) written to a raw file, with the n-grams'
    document frequencies and lengths counted; `finish` renumbers the words by frequency (the
    commonest in one byte) and writes the files."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self.raw = folder / f".{CharView.TOKENS}.raw"
        self.out = self.raw.open("wb")
        self.ids: dict[str, int] = {}
        self.frequency = np.zeros(0, np.int64)
        self.df = [np.zeros(_CHARS.n_features, np.int64), np.zeros(_CHARS.n_features, np.int64)]
        self.tokens: list[np.ndarray] = []  # words per sentence
        self.lengths = [0.0, 0.0]  # n-grams in all sentences (= in all passages)
        self.passages = 0

    def add(self, sentences: list[str], per_passage: np.ndarray) -> None:
        """The sentences of a batch of passages, in order; per_passage: each passage's number of them."""
        words = [_words_only(s).split() for s in sentences]
        ids = np.fromiter((self.ids.setdefault(w, len(self.ids)) for ws in words for w in ws), np.int64)
        ids.astype(np.uint32).tofile(self.out)
        self.frequency = np.bincount(ids, minlength=len(self.ids)) + np.pad(
            self.frequency, (0, len(self.ids) - len(self.frequency))
        )
        self.tokens.append(np.fromiter(map(len, words), np.int64, len(words)))
        counts = _counts_of_words(words)
        self.df[0] += np.bincount(counts.indices, minlength=_CHARS.n_features)
        self.df[1] += np.bincount(_sum_by_passage(counts, per_passage).indices, minlength=_CHARS.n_features)
        self.lengths[0] += float(counts.sum())
        self.passages += len(per_passage)

    def finish(self) -> None:
        self.out.close()
        tokens = np.concatenate(self.tokens) if self.tokens else np.zeros(0, np.int64)
        # the commonest words get the smallest ids (one byte below 128); ties keep first appearance
        order = np.argsort(-self.frequency, kind="stable")
        rank = np.empty(len(order), np.int64)
        rank[order] = np.arange(len(order))
        words = list(self.ids)
        grams = [_word_ngrams(words[i]) for i in order]
        word_indptr = np.concatenate(([0], np.cumsum([len(g) for g in grams]))).astype(np.int64)
        arrays.save(self.folder / "char-word-indptr.npy", _smallest_uint(word_indptr))
        arrays.save(self.folder / "char-word-ngrams.npy", np.concatenate(grams) if grams else np.zeros(0, np.int32))
        ngrams = np.flatnonzero(self.df[0]).astype(np.int32)
        arrays.save(self.folder / "char-ngrams.npy", ngrams)
        arrays.save(self.folder / "char-df.npy", _smallest_uint(np.stack([d[ngrams] for d in self.df], axis=1)))
        sizes = self._encode(rank, int(tokens.sum()))
        token_starts = np.concatenate(([0], np.cumsum(sizes, dtype=np.int64)))  # and the end
        indptr = token_starts[np.concatenate(([0], np.cumsum(tokens)))]
        arrays.save(self.folder / "char-indptr.npy", _smallest_uint(indptr))
        meta = {"sentences": len(tokens), "passages": self.passages,
                "means": [self.lengths[0] / max(len(tokens), 1), self.lengths[0] / max(self.passages, 1)]}  # fmt: skip
        (self.folder / CharView.META).write_text(json.dumps(meta))
        self.raw.unlink()

    def _encode(self, rank: np.ndarray, total: int) -> np.ndarray:
        """Renumbers the raw ids and writes them as varints; returns each token's size in bytes."""
        sizes = np.empty(total, np.int8)
        done = 0
        with self.raw.open("rb") as raw, (self.folder / CharView.TOKENS).open("wb") as out:
            while done < total:
                ids = rank[np.fromfile(raw, dtype=np.uint32, count=min(1 << 24, total - done))]
                buffer = np.empty(5 * len(ids), np.uint8)
                sizes[done : done + len(ids)] = _varints(ids, buffer)
                buffer[: int(sizes[done : done + len(ids)].sum())].tofile(out)
                done += len(ids)
        return sizes
