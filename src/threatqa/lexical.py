"""Lexical retrieval (part of the index stage): BM25 in a word view and a character n-gram view.

Measured on the SQuAD 2.0 subset (see `threatqa eval`), each part of the method adds accuracy
over plain BM25 on whole paragraphs:
- words are Snowball-stemmed with a broad stopword list, British -ise spellings folded to -ize;
- character 3-5-grams inside words catch spelling variants, compounds and partial matches;
- a passage scores its own BM25 plus half the BM25 of its best sentence, which rewards the
  question's terms appearing close together;
- the two views are combined after scaling each by its best score (CombSUM of max-normalised
  scores), which keeps each view's score gaps where rank fusion would flatten them.
The word view (bm25s, sparse) scores every passage; the character view, ten times costlier per
passage, re-scores only the word view's best candidates, so a query's cost barely grows with
the corpus.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path

import bm25s
import numpy as np
import Stemmer
from bm25s.stopwords import STOPWORDS_EN
from scipy import sparse
from sklearn.feature_extraction.text import ENGLISH_STOP_WORDS, HashingVectorizer

from threatqa.chunking import Span, paragraphs, sentences

SENTENCE_WEIGHT = 0.5
CHAR_NGRAMS = (3, 5)  # n-gram sizes, inclusive
CHAR_CANDIDATES = 200  # passages (best by the word view) that the character view re-scores
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


@dataclass(frozen=True)
class _View:
    passages: bm25s.BM25
    sentences: bm25s.BM25


@dataclass(frozen=True)
class CharView:
    """BM25 weights of character n-grams per passage, as a CSR matrix (rows: passages).

    Only the rows of a question's candidates are ever read, so the cost of a query does not grow
    with the corpus, and the arrays can stay memory-mapped on disk."""

    weights: sparse.csr_matrix

    @classmethod
    def build(cls, texts: list[str], k1: float = 1.5, b: float = 0.75, batch: int = 5000) -> CharView:
        parts = [_CHARS.transform(texts[i : i + batch]) for i in range(0, len(texts), batch)]
        counts = sparse.vstack(parts or [sparse.csr_matrix((0, _CHARS.n_features))], format="csr")
        lengths = np.asarray(counts.sum(axis=1)).ravel()
        per_row = k1 * (1 - b + b * lengths / max(float(lengths.mean()) if len(lengths) else 1.0, 1e-9))
        df = np.bincount(counts.indices, minlength=counts.shape[1])
        idf = np.log(1 + (len(texts) - df + 0.5) / (df + 0.5)).astype(np.float32)
        tf = counts.data
        saturation = np.repeat(per_row, np.diff(counts.indptr)).astype(np.float32)
        counts.data = (tf * (k1 + 1) / (tf + saturation) * idf[counts.indices]).astype(np.float32)
        return cls(counts)

    def scores(self, question: str, rows: np.ndarray) -> np.ndarray:
        """BM25 of the question's character n-grams for the given passage rows."""
        query = _CHARS.transform([question])
        if not query.nnz:
            return np.zeros(len(rows), dtype=np.float32)
        picked = self.weights[rows][:, query.indices]
        return np.asarray(picked @ query.data).ravel().astype(np.float32)

    def save(self, folder: Path, name: str) -> None:
        for part in ("data", "indices", "indptr"):
            np.save(folder / f"{name}-{part}.npy", getattr(self.weights, part))
        np.save(folder / f"{name}-shape.npy", np.array(self.weights.shape))

    @classmethod
    def load(cls, folder: Path, name: str) -> CharView:
        arrays = [np.load(folder / f"{name}-{part}.npy", mmap_mode="r") for part in ("data", "indices", "indptr")]
        shape = tuple(int(v) for v in np.load(folder / f"{name}-shape.npy"))
        return cls(sparse.csr_matrix(tuple(arrays), shape=shape, copy=False))


@dataclass(frozen=True)
class _CharViews:
    passages: CharView
    sentences: CharView


class LexicalIndex:
    """BM25 over passages and their sentences (stemmed words), re-scored with character n-grams.

    The word view scores every passage (sparse, fast); the character view then scores the best
    `CHAR_CANDIDATES` of them, which is where it changes the order."""

    def __init__(self, words: _View, chars: _CharViews, sentence_starts: np.ndarray, count: int) -> None:
        self.words = words
        self.chars = chars
        self.sentence_starts = sentence_starts  # index of each passage's first sentence
        self.count = count

    @classmethod
    def build(cls, texts: list[str]) -> LexicalIndex:
        sents: list[str] = []
        starts = np.zeros(len(texts), dtype=np.int64)
        for i, text in enumerate(texts):
            starts[i] = len(sents)
            spans = [s for p in paragraphs(text) for s in sentences(text, p)] or [Span(0, len(text))]
            sents.extend(text[s.start : s.end] for s in spans)
        words = _View(_bm25([word_tokens(t) for t in texts]), _bm25([word_tokens(s) for s in sents]))
        return cls(words, _CharViews(CharView.build(texts), CharView.build(sents)), starts, len(texts))

    def save(self, folder: Path) -> None:
        folder.mkdir(parents=True, exist_ok=True)
        self.words.passages.save(str(folder / "word-passages"), show_progress=False)
        self.words.sentences.save(str(folder / "word-sentences"), show_progress=False)
        self.chars.passages.save(folder, "char")
        self.chars.sentences.save(folder, "char-sentences")
        np.save(folder / "sentence_starts.npy", self.sentence_starts)
        (folder / "lexical.json").write_text(json.dumps({"count": self.count}))

    @classmethod
    def load(cls, folder: Path) -> LexicalIndex:
        meta = json.loads((folder / "lexical.json").read_text())
        words = _View(_load(folder / "word-passages"), _load(folder / "word-sentences"))
        chars = _CharViews(CharView.load(folder, "char"), CharView.load(folder, "char-sentences"))
        return cls(words, chars, np.load(folder / "sentence_starts.npy"), int(meta["count"]))

    def search(self, question: str, k: int, mask: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
        """The k best passage rows and their scores (only rows where mask is True, if given).

        A question of stopwords only has nothing to search for, even though its character
        n-grams would match almost every passage."""
        empty = np.zeros(0, dtype=np.int64), np.zeros(0, dtype=np.float32)
        tokens = word_tokens(question)
        if not tokens or not self.count:
            return empty
        best_sentence = np.maximum.reduceat(self.words.sentences.get_scores(tokens), self.sentence_starts)
        word = self.words.passages.get_scores(tokens) + SENTENCE_WEIGHT * best_sentence
        if mask is not None:
            word = np.where(mask, word, 0.0)
        rows = _top(word, max(k, CHAR_CANDIDATES))
        if len(rows) < k and self.count <= CHAR_CANDIDATES * 10:
            # too few passages share a word with the question: in a small index, let the character
            # view find the nearest ones (partial words), so there is something to show
            allowed = np.flatnonzero(mask) if mask is not None else np.arange(self.count)
            rows = np.union1d(rows, allowed[: CHAR_CANDIDATES * 10])
        if not len(rows):
            return empty
        char = self.chars.passages.scores(question, rows) + SENTENCE_WEIGHT * self._best_char_sentence(question, rows)
        top_word = word[rows].max()
        combined = (word[rows] / top_word if top_word > 0 else 0.0) + (char / char.max() if char.max() > 0 else 0.0)
        keep = combined > 0
        rows, combined = rows[keep], combined[keep]
        order = np.lexsort((rows, -combined))[:k]  # best first; ties by row for determinism
        return rows[order].astype(np.int64), combined[order].astype(np.float32)

    def _best_char_sentence(self, question: str, rows: np.ndarray) -> np.ndarray:
        """For each passage row: the character-view BM25 of its best sentence."""
        ends = np.append(self.sentence_starts[1:], self.chars.sentences.weights.shape[0])
        firsts, lasts = self.sentence_starts[rows], ends[rows]
        sentence_rows = np.concatenate([np.arange(a, z) for a, z in zip(firsts, lasts)])
        scores = self.chars.sentences.scores(question, sentence_rows)
        return np.maximum.reduceat(scores, np.concatenate(([0], np.cumsum(lasts - firsts)[:-1])))

    def coverage(self, question: str, texts: list[str]) -> list[float]:
        """For each text: the share of the question's IDF mass (distinct word stems) it contains.

        Terms unknown to the index weigh as much as the rarest known term, so a question about
        something the documents never mention scores near zero."""
        terms = list(dict.fromkeys(word_tokens(question)))
        if not terms:
            return [0.0] * len(texts)
        weights = np.array([self._idf(t) for t in terms])
        result = []
        for text in texts:
            present = set(word_tokens(text))
            result.append(float(weights[[t in present for t in terms]].sum() / weights.sum()))
        return result

    def _idf(self, term: str) -> float:
        """BM25 (Lucene) IDF of a word stem; document frequency read off the CSC matrix."""
        passages = self.words.passages
        tid = passages.vocab_dict.get(term)
        indptr = passages.scores["indptr"]
        df = 0 if tid is None else int(indptr[tid + 1] - indptr[tid])
        return float(np.log(1 + (self.count - df + 0.5) / (df + 0.5)))


def _bm25(corpus: list[list[str]]) -> bm25s.BM25:
    retriever = bm25s.BM25()
    # bm25s cannot index an empty vocabulary; a placeholder token keeps empty corpora searchable
    retriever.index([tokens or ["\x00"] for tokens in corpus] or [["\x00"]], show_progress=False)
    return retriever


def _load(folder: Path) -> bm25s.BM25:
    return bm25s.BM25.load(str(folder), mmap=True, show_progress=False)


def _top(scores: np.ndarray, k: int) -> np.ndarray:
    """Rows of the k highest positive scores (unordered)."""
    k = min(k, int(np.count_nonzero(scores > 0)))
    if k <= 0:
        return np.zeros(0, dtype=np.int64)
    return np.argpartition(-scores, k - 1)[:k]
