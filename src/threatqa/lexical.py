"""Lexical retrieval (part of the index stage): BM25 in a word view and a character n-gram view.

Measured on the SQuAD 2.0 subset (see `threatqa eval`), each part of the method adds accuracy
over plain BM25 on whole paragraphs:
- words are Snowball-stemmed with a broad stopword list, British -ise spellings folded to -ize;
- character 3-5-grams inside words catch spelling variants, compounds and partial matches;
- a passage scores its own BM25 plus half the BM25 of its best sentence, which rewards the
  question's terms appearing close together;
- the two views are combined after scaling each by its best score (CombSUM of max-normalised
  scores), which keeps each view's score gaps where rank fusion would flatten them.

Both views are BM25 (Lucene's variant) over a sparse count matrix made by scikit-learn's
vectorizers: `CountVectorizer` with our word analyzer, `HashingVectorizer` for character n-grams.
The word view is stored by term (CSC: one posting list per stem, memory-mapped), so a question
reads only the postings of its own terms, for passages and sentences alike. The character view,
ten times larger, is stored by passage and read with `os.pread` for the word view's best
candidates only. Both are built a batch at a time, so neither building nor serving holds a large
corpus in memory.
"""

from __future__ import annotations

import contextlib
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
from scipy import sparse
from sklearn.feature_extraction.text import ENGLISH_STOP_WORDS, CountVectorizer, HashingVectorizer

from threatqa.chunking import Span, paragraphs, sentences

SENTENCE_WEIGHT = 0.5
CHAR_NGRAMS = (3, 5)  # n-gram sizes, inclusive
CHAR_CANDIDATES = 200  # passages (best by the word view) that the character view re-scores
K1, B = 1.5, 0.75  # BM25 parameters (the usual defaults)
BATCH = 10_000  # texts vectorised at a time when building
ENTRY = np.dtype([("ngram", "<i4"), ("weight", "<f4")])  # one character n-gram of one text
_TOKEN = re.compile(r"(?u)\b\w\w+\b")
_STOPWORDS = frozenset(STOPWORDS_EN) | frozenset(ENGLISH_STOP_WORDS)
_STEMMER = Stemmer.Stemmer("english")
# British -ise spellings to -ize before stemming (Snowball stems "organised" and "organized"
# differently); applied to documents and questions alike, so it can only merge variants.
_BRITISH_ISE = re.compile(r"^(\w{3,})is(e|ed|es|ing|er|ers|ation|ations)$")


def word_tokens(text: str) -> list[str]:
    """Lower-cased, stopword-free, spelling-normalised, Snowball-stemmed word tokens."""
    words = [_BRITISH_ISE.sub(r"\1iz\2", t) for t in _TOKEN.findall(text.lower()) if t not in _STOPWORDS]
    return _STEMMER.stemWords(words)


def _words_only(text: str) -> str:
    """Lower-cased words of two or more characters, space-separated (the char view's input)."""
    return " ".join(_TOKEN.findall(text.lower()))


# Character 3-5-grams inside words (padded with a space), hashed into a fixed-size space so the
# view needs no vocabulary; collisions at 2**20 buckets are rare enough not to matter for ranking.
_CHARS = HashingVectorizer(
    analyzer="char_wb", ngram_range=CHAR_NGRAMS, n_features=2**20, alternate_sign=False, norm=None,
    preprocessor=_words_only, dtype=np.float32,
)  # fmt: skip


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


def _ranges(starts: np.ndarray, ends: np.ndarray) -> np.ndarray:
    """The concatenation of arange(s, e) for each pair, without a Python loop."""
    lengths = ends - starts
    offsets = np.repeat(starts - np.cumsum(lengths) + lengths, lengths)
    return offsets + np.arange(int(lengths.sum()), dtype=np.int64)


def _open(path: Path) -> np.ndarray:
    """A saved array, memory-mapped (as a plain ndarray: no per-access overhead of np.memmap)."""
    return np.asarray(np.load(path, mmap_mode="r"))


@contextlib.contextmanager
def _npy_writer(path: Path, dtype: type, length: int) -> Iterator[BinaryIO]:
    """A .npy file of a 1-D array, opened for writing its `length` values in order."""
    with path.open("wb") as out:
        header = {"descr": np.lib.format.dtype_to_descr(np.dtype(dtype)), "fortran_order": False, "shape": (length,)}
        np.lib.format.write_array_header_1_0(out, header)
        start = out.tell()
        yield out
        if out.tell() - start != length * np.dtype(dtype).itemsize:
            raise OSError(f"{path.name}: wrote {out.tell() - start} bytes for {length} values")


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

    def postings(self, terms: np.ndarray) -> np.ndarray:
        """Positions of the terms' postings (a term given twice, twice)."""
        return _ranges(self.indptr[terms], self.indptr[terms + 1])

    def accumulate(self, postings: np.ndarray, into: np.ndarray) -> np.ndarray:
        """Adds the postings' BM25 weights to their rows in `into`; returns those rows (with repeats)."""
        rows = self.indices[postings]
        np.add.at(into, rows, self.data[postings])
        return rows

    def contains(self, term: int, rows: np.ndarray) -> np.ndarray:
        """For each row: whether its text has the term."""
        postings = self.indices[self.indptr[term] : self.indptr[term + 1]]
        if not len(postings):
            return np.zeros(len(rows), dtype=bool)
        at = np.minimum(np.searchsorted(postings, rows), len(postings) - 1)
        return postings[at] == rows

    def document_frequency(self, term: int) -> int:
        return int(self.indptr[term + 1] - self.indptr[term])

    def save(self, folder: Path, name: str) -> None:
        for part in ("data", "indices", "indptr"):
            np.save(folder / f"{name}-{part}.npy", getattr(self, part))

    @classmethod
    def load(cls, folder: Path, name: str, rows: int) -> WordView:
        return cls(*(_open(folder / f"{name}-{part}.npy") for part in ("data", "indices", "indptr")), rows=rows)


class _CharCounts:
    """A character view being built: counts a batch at a time to a raw file (with document
    frequencies and lengths kept), then BM25 weights in a second sequential pass."""

    def __init__(self, folder: Path, name: str) -> None:
        self.folder, self.name = folder, name
        self.df = np.zeros(_CHARS.n_features, dtype=np.int64)
        self.sizes: list[np.ndarray] = []
        self.lengths: list[np.ndarray] = []
        self.raw = {part: folder / f".{name}-{part}.raw" for part in ("data", "indices")}
        self.outs = {part: path.open("wb") for part, path in self.raw.items()}

    def add(self, counts: sparse.csr_matrix) -> None:
        counts.sort_indices()
        counts.data.astype(np.float32).tofile(self.outs["data"])
        counts.indices.astype(np.int32).tofile(self.outs["indices"])
        self.sizes.append(np.diff(counts.indptr))
        self.lengths.append(np.asarray(counts.sum(axis=1), dtype=np.float32).ravel())
        self.df += np.bincount(counts.indices, minlength=_CHARS.n_features)

    def finish(self) -> None:
        for out in self.outs.values():
            out.close()
        sizes = np.concatenate(self.sizes) if self.sizes else np.zeros(0, dtype=np.int64)
        length = np.concatenate(self.lengths) if self.lengths else np.zeros(0, dtype=np.float32)
        indptr = np.concatenate(([0], np.cumsum(sizes))).astype(np.int64)
        idf, mean_length, total = _idf(self.df, len(length)).astype(np.float32), _mean(length), int(indptr[-1])
        # plain sequential reads and writes: memory-mapping files this size would make every page
        # of them count as the process's resident memory
        with (
            self.raw["data"].open("rb") as counts_in, self.raw["indices"].open("rb") as ngrams_in,
            _npy_writer(self.folder / f"{self.name}-entries.npy", ENTRY, total) as out,
        ):  # fmt: skip
            for first in range(0, len(length), BATCH * 5):
                rows = slice(first, min(first + BATCH * 5, len(length)))
                count = int(indptr[rows.stop] - indptr[rows.start])
                entries = np.empty(count, dtype=ENTRY)
                entries["ngram"] = np.fromfile(ngrams_in, dtype=np.int32, count=count)
                tf = np.fromfile(counts_in, dtype=np.float32, count=count)
                per_entry = np.repeat(length[rows], sizes[rows])
                entries["weight"] = idf[entries["ngram"]] * _saturate(tf, per_entry, mean_length)
                entries.tofile(out)
        for path in self.raw.values():
            path.unlink()
        np.save(self.folder / f"{self.name}-indptr.npy", indptr)


def _sum_by_passage(counts: sparse.csr_matrix, per_passage: np.ndarray) -> sparse.csr_matrix:
    """Passage rows from sentence rows: a passage's words are exactly its sentences' words (sentences
    split at whitespace and cover the passage), so its counts are their sums."""
    owner = np.repeat(np.arange(len(per_passage)), per_passage)
    summing = sparse.csr_matrix((np.ones(len(owner), np.float32), (owner, np.arange(len(owner)))),
                                shape=(len(per_passage), counts.shape[0]))  # fmt: skip
    return (summing @ counts).tocsr()


@dataclass(frozen=True)
class CharView:
    """BM25 weights of character n-grams, stored by text (rows are texts, each a run of entries).

    Only the rows of a question's candidates are ever read, so the cost of a query does not grow
    with the corpus. They are read with `os.pread` rather than memory-mapped: this view is the
    largest part of the index (about 15 KB a passage), and mapped pages of it would count as
    the server's resident memory, growing with every candidate ever read."""

    file: BinaryIO  # the .npy of entries (ENTRY records), unbuffered
    offset: int  # where the records start in the file
    indptr: np.ndarray  # int64, rows + 1: row i's entries are [indptr[i], indptr[i + 1])

    @classmethod
    def load(cls, folder: Path, name: str) -> CharView:
        file = (folder / f"{name}-entries.npy").open("rb", buffering=0)
        np.lib.format.read_magic(file)
        shape, _, dtype = np.lib.format.read_array_header_1_0(file)
        indptr = np.load(folder / f"{name}-indptr.npy")
        if dtype != ENTRY or shape != (int(indptr[-1]),):
            file.close()
            raise ValueError(f"{file.name} holds {shape} of {dtype}, expected {int(indptr[-1])} entries")
        return cls(file, file.tell(), indptr)

    def scores(self, query: np.ndarray, rows: np.ndarray) -> np.ndarray:
        """BM25 of a question's character n-grams (its count per n-gram hash) for the given rows.

        Consecutive rows (a passage's sentences) are read in one go."""
        if not len(rows):
            return np.zeros(0)
        starts, ends = self.indptr[rows], self.indptr[rows + 1]
        cut = np.flatnonzero(starts[1:] != ends[:-1]) + 1  # where the next row is not adjacent on disk
        first, last = starts[np.r_[0, cut]].tolist(), ends[np.r_[cut - 1, len(rows) - 1]].tolist()
        size, fd = ENTRY.itemsize, self.file.fileno()
        data = b"".join([os.pread(fd, (z - a) * size, self.offset + a * size) for a, z in zip(first, last)])
        entries = np.frombuffer(data, dtype=ENTRY)
        if len(entries) != int((ends - starts).sum()):
            raise OSError(f"{self.file.name}: short read")
        weights = entries["weight"] * query[entries["ngram"]]
        sizes = ends - starts
        result, filled = np.zeros(len(rows)), sizes > 0
        result[filled] = np.add.reduceat(weights, (np.cumsum(sizes) - sizes)[filled])
        return result


@dataclass(frozen=True)
class _Scratch:
    """Zeroed arrays a query accumulates into, reused from query to query and zeroed again where
    written: fresh arrays of corpus size would cost a page fault per 4 KB at every query."""

    passages: np.ndarray  # float32 per passage: word-view BM25
    best_sentence: np.ndarray  # float32 per passage: word-view BM25 of its best sentence
    touched: np.ndarray  # bool per passage
    sentences: np.ndarray  # float32 per sentence
    ngrams: np.ndarray  # float32 per n-gram hash: the question's count

    @classmethod
    def create(cls, passages: int, sentences: int) -> _Scratch:
        return cls(np.zeros(passages, np.float32), np.zeros(passages, np.float32), np.zeros(passages, bool),
                   np.zeros(sentences, np.float32), np.zeros(_CHARS.n_features, np.float32))  # fmt: skip


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
        self.chars = CharView.load(folder, "char")
        self.char_sentences = CharView.load(folder, "char-sentences")
        self.sentence_starts = np.load(folder / "sentence_starts.npy")  # each passage's first sentence
        self.sentence_ends = np.append(self.sentence_starts[1:], self.word_sentences.rows)
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
        chars, char_sentences = _CharCounts(folder, "char"), _CharCounts(folder, "char-sentences")
        for first in range(0, len(texts), BATCH):
            batch = per_passage[first : first + BATCH]
            counts = _CHARS.transform(_sentences(texts[first : first + BATCH]))
            char_sentences.add(counts)
            chars.add(_sum_by_passage(counts, batch))
        chars.finish()
        char_sentences.finish()
        np.save(folder / "sentence_starts.npy", np.concatenate(([0], np.cumsum(per_passage)[:-1])).astype(np.int64))
        vocabulary = {term: int(column) for term, column in vectorizer.vocabulary_.items()}
        meta = {"count": len(texts), "sentences": int(per_passage.sum()), "vocabulary": vocabulary}
        (folder / cls.META).write_text(json.dumps(meta))
        return cls(folder)

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
        rows, word = self._word_scores(terms, scratch)
        if mask is not None:
            keep = mask[rows]
            rows, word = rows[keep], word[keep]
        candidates = max(k, CHAR_CANDIDATES)
        if len(rows) > candidates:
            best = np.argpartition(-word, candidates - 1)[:candidates]
            rows, word = rows[best], word[best]
        if len(rows) < k and self.count <= CHAR_CANDIDATES * 10:
            # too few passages share a word with the question: in a small index, let the character
            # view find the nearest ones (partial words), so there is something to show
            allowed = np.flatnonzero(mask) if mask is not None else np.arange(self.count)
            extra = np.setdiff1d(allowed[: CHAR_CANDIDATES * 10], rows)
            rows, word = np.concatenate((rows, extra)), np.concatenate((word, np.zeros(len(extra))))
        if not len(rows):
            return np.zeros(0, dtype=np.int64), np.zeros(0, dtype=np.float32)
        ngrams = _CHARS.transform([question])
        scratch.ngrams[ngrams.indices] = ngrams.data
        try:
            char = self.chars.scores(scratch.ngrams, rows) + SENTENCE_WEIGHT * self._best_char_sentence(scratch, rows)
        finally:
            scratch.ngrams[ngrams.indices] = 0.0
        combined = _scaled(word) + _scaled(char)
        keep = combined > 0
        rows, combined = rows[keep], combined[keep]
        order = np.lexsort((rows, -combined))[:k]  # best first; ties by row for determinism
        return rows[order].astype(np.int64), combined[order].astype(np.float32)

    def _take_scratch(self) -> _Scratch:
        try:
            return self._free.get_nowait()
        except queue.Empty:  # as many sets as questions ever searched at once
            return _Scratch.create(self.count, self.word_sentences.rows)

    def _word_scores(self, terms: np.ndarray, scratch: _Scratch) -> tuple[np.ndarray, np.ndarray]:
        """Rows sharing a stem with the question and their word-view score: BM25 + half the best sentence's."""
        passages, best, touched, sentences = scratch.passages, scratch.best_sentence, scratch.touched, scratch.sentences
        touched[self.words.accumulate(self.words.postings(terms), passages)] = True
        postings = self.word_sentences.postings(terms)
        sentence_rows = self.word_sentences.accumulate(postings, sentences)
        owners = self.posting_owner[postings]
        np.maximum.at(best, owners, sentences[sentence_rows])
        touched[owners] = True
        sentences[sentence_rows] = 0.0
        rows = np.flatnonzero(touched)
        scores = passages[rows] + SENTENCE_WEIGHT * best[rows].astype(np.float64)
        passages[rows], best[rows], touched[rows] = 0.0, 0.0, False
        return rows, scores

    def _best_char_sentence(self, scratch: _Scratch, rows: np.ndarray) -> np.ndarray:
        """For each passage row: the character-view BM25 of its best sentence."""
        firsts, lasts = self.sentence_starts[rows], self.sentence_ends[rows]
        scores = self.char_sentences.scores(scratch.ngrams, _ranges(firsts, lasts))
        return np.maximum.reduceat(scores, np.concatenate(([0], np.cumsum(lasts - firsts)[:-1])))

    def coverage(self, question: str, rows: list[int]) -> list[float]:
        """For each passage row: the share of the question's IDF mass (distinct word stems) it contains.

        Terms unknown to the index weigh as much as the rarest possible term, so a question about
        something the documents never mention scores near zero."""
        stems = list(dict.fromkeys(word_tokens(question)))
        if not stems:
            return [0.0] * len(rows)
        at = np.asarray(rows, dtype=np.int64)
        found = np.zeros(len(rows))
        weights = 0.0
        for stem in stems:
            column = self.vocabulary.get(stem)
            df = 0 if column is None else self.words.document_frequency(column)
            weight = float(_idf(df, self.count))
            weights += weight
            if column is not None:
                found += weight * self.words.contains(column, at)
        return (found / weights).tolist()
