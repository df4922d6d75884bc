"""Lexical retrieval (part of the index stage): BM25 over two views of every passage.

Measured on the SQuAD 2.0 subset (see `threatqa eval`), each part of the method adds accuracy
over plain BM25 on whole paragraphs:
- words are Snowball-stemmed with a broad stopword list ("organised" matches "organized"'s stem
  less often than its character n-grams do, so both views are kept);
- character 3-5-grams inside words catch spelling variants, compounds and partial matches;
- a passage scores its own BM25 plus half the BM25 of its best sentence, which rewards the
  question's terms appearing close together;
- the two views are combined after scaling each by its best score (CombSUM of max-normalised
  scores), which keeps each view's score gaps where rank fusion would flatten them.
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
from sklearn.feature_extraction.text import ENGLISH_STOP_WORDS

from threatqa.chunking import Span, paragraphs, sentences

SENTENCE_WEIGHT = 0.5
CHAR_NGRAMS = (3, 4, 5)
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


def char_tokens(text: str) -> list[str]:
    """Character 3-5-grams of every word, padded with a space on each side."""
    grams = []
    for word in _TOKEN.findall(text.lower()):
        padded = f" {word} "
        for n in CHAR_NGRAMS:
            grams.extend(padded[i : i + n] for i in range(max(1, len(padded) - n + 1)))
    return grams


VIEWS = {"word": word_tokens, "char": char_tokens}


@dataclass(frozen=True)
class _View:
    passages: bm25s.BM25
    sentences: bm25s.BM25


class LexicalIndex:
    """BM25 over passages and their sentences, in a word view and a character n-gram view."""

    def __init__(self, views: dict[str, _View], sentence_starts: np.ndarray, count: int) -> None:
        self.views = views
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
        views = {
            name: _View(_bm25([tokenize(t) for t in texts]), _bm25([tokenize(s) for s in sents]))
            for name, tokenize in VIEWS.items()
        }
        return cls(views, starts, len(texts))

    def save(self, folder: Path) -> None:
        folder.mkdir(parents=True, exist_ok=True)
        for name, view in self.views.items():
            view.passages.save(str(folder / f"{name}-passages"), show_progress=False)
            view.sentences.save(str(folder / f"{name}-sentences"), show_progress=False)
        np.save(folder / "sentence_starts.npy", self.sentence_starts)
        (folder / "lexical.json").write_text(json.dumps({"count": self.count, "views": list(self.views)}))

    @classmethod
    def load(cls, folder: Path) -> LexicalIndex:
        meta = json.loads((folder / "lexical.json").read_text())
        views = {
            name: _View(_load(folder / f"{name}-passages"), _load(folder / f"{name}-sentences"))
            for name in meta["views"]
        }
        return cls(views, np.load(folder / "sentence_starts.npy"), int(meta["count"]))

    def scores(self, question: str) -> np.ndarray | None:
        """Combined score of every passage, or None when no question term is in the index.

        A question of stopwords only has nothing to search for, even though its character
        n-grams would match almost every passage."""
        if not word_tokens(question):
            return None
        total = np.zeros(self.count, dtype=np.float32)
        matched = False
        for name, view in self.views.items():
            tokens = VIEWS[name](question)
            if not tokens or not self.count:
                continue
            best_sentence = np.maximum.reduceat(view.sentences.get_scores(tokens), self.sentence_starts)
            score = view.passages.get_scores(tokens) + SENTENCE_WEIGHT * best_sentence
            top = float(score.max())
            if top > 0:
                total += score / top
                matched = True
        return total if matched else None

    def search(self, question: str, k: int, mask: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
        """The k best passage rows and their scores (only rows where mask is True, if given)."""
        scores = self.scores(question)
        if scores is None:
            return np.zeros(0, dtype=np.int64), np.zeros(0, dtype=np.float32)
        if mask is not None:
            scores = np.where(mask, scores, 0.0)
        k = min(k, int(np.count_nonzero(scores)))
        if k <= 0:
            return np.zeros(0, dtype=np.int64), np.zeros(0, dtype=np.float32)
        top = np.argpartition(-scores, k - 1)[:k]
        top = top[np.lexsort((top, -scores[top]))]  # best first; ties by row for determinism
        return top.astype(np.int64), scores[top]

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
        passages = self.views["word"].passages
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
