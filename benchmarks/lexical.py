"""Where the lexical index spends its time: the word view vs the character n-gram view.

python benchmarks/lexical.py --sizes 10000 30000
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np
from common import folder_mb, passages, peak_rss_mb, percentiles, squad_questions, table, time_calls

from threatqa.lexical import SENTENCE_WEIGHT, VIEWS, LexicalIndex


def view_scores(index: LexicalIndex, name: str, question: str) -> np.ndarray:
    view, tokens = index.views[name], VIEWS[name](question)
    best = np.maximum.reduceat(view.sentences.get_scores(tokens), index.sentence_starts)
    return view.passages.get_scores(tokens) + SENTENCE_WEIGHT * best


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
            word = percentiles(time_calls(lambda q, i=index: view_scores(i, "word", q), questions))
            char = percentiles(time_calls(lambda q, i=index: view_scores(i, "char", q), questions))
            total = percentiles(time_calls(lambda q, i=index: i.search(q, 50), questions))
        rows.append([f"{n:,}", build_s, n / build_s, peak_rss_mb(), size, word[0], char[0], total[0], total[1]])
    table(
        "Lexical index (bm25s, numpy backend): build and per-view query cost, 200 SQuAD questions",
        ["passages", "build s", "passages/s", "peak RSS MB", "on disk MB", "word view p50 ms", "char view p50 ms",
         "search p50 ms", "search p95 ms"],
        rows,
    )  # fmt: skip


if __name__ == "__main__":
    main()
