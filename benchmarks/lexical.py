"""Where the lexical index spends its time: the word view (every passage) vs the character
n-gram view (re-scoring the word view's best candidates only).

python benchmarks/lexical.py --sizes 10000 30000
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np
from common import folder_mb, passages, peak_rss_mb, percentiles, squad_questions, table, time_calls

from threatqa.lexical import CHAR_CANDIDATES, SENTENCE_WEIGHT, LexicalIndex, word_tokens


def word_view(index: LexicalIndex, question: str) -> np.ndarray:
    tokens = word_tokens(question) or ["-"]
    best = np.maximum.reduceat(index.words.sentences.get_scores(tokens), index.sentence_starts)
    return index.words.passages.get_scores(tokens) + SENTENCE_WEIGHT * best


def char_view(index: LexicalIndex, question: str, rows: np.ndarray) -> np.ndarray:
    best = index._best_char_sentence(question, rows)
    return index.chars.passages.scores(question, rows) + SENTENCE_WEIGHT * best


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[10_000, 30_000])
    args = parser.parse_args()
    questions, rows = squad_questions()[:200], []
    for n in args.sizes:
        texts = passages(n, seed=4)
        t = time.perf_counter()
        built = LexicalIndex.build(texts)
        build_s = time.perf_counter() - t
        with tempfile.TemporaryDirectory() as tmp:
            built.save(Path(tmp) / "bm25")
            size = {name: folder_mb(Path(tmp) / "bm25") for name in ("all",)}["all"]
            index = LexicalIndex.load(Path(tmp) / "bm25")
            word = percentiles(time_calls(lambda q, i=index: word_view(i, q), questions))
            rows_ = np.arange(min(CHAR_CANDIDATES, n))
            char = percentiles(time_calls(lambda q, i=index, r=rows_: char_view(i, q, r), questions))
            total = percentiles(time_calls(lambda q, i=index: i.search(q, 50), questions))
        rows.append([f"{n:,}", build_s, n / build_s, peak_rss_mb(), size, word[0], char[0], total[0], total[1]])
    table(
        "Lexical index (bm25s, numpy backend): build and per-view query cost, 200 SQuAD questions",
        ["passages", "build s", "passages/s", "peak RSS MB", "on disk MB", "word view p50 ms",
         f"char view ({CHAR_CANDIDATES} cand.) p50 ms",
         "search p50 ms", "search p95 ms"],
        rows,
    )  # fmt: skip


if __name__ == "__main__":
    main()
