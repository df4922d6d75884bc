"""Where the lexical index spends its time: the word view (posting lists of the question's stems, for
passages and sentences) vs the character n-gram view (re-scoring the word view's best candidates).

python benchmarks/lexical.py --sizes 10000 30000
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np
from common import folder_mb, passages, peak_rss_mb, percentiles, squad_questions, table, time_calls

from threatqa.lexical import CHAR_CANDIDATES, LexicalIndex


def word_view(index: LexicalIndex, question: str) -> np.ndarray:
    scratch = index._take_scratch()
    try:
        return index._word_scores(index.terms(question), scratch)[1]
    finally:
        index._free.put(scratch)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[10_000, 30_000])
    args = parser.parse_args()
    questions, rows = squad_questions()[:200], []
    for n in args.sizes:
        texts = passages(n, seed=4)
        with tempfile.TemporaryDirectory() as tmp:
            t = time.perf_counter()
            LexicalIndex.build(texts, Path(tmp) / "bm25")
            build_s = time.perf_counter() - t
            size = folder_mb(Path(tmp) / "bm25")
            index = LexicalIndex(Path(tmp) / "bm25")
            for q in squad_questions()[200:400]:  # map the files' pages in, as a running server has
                index.search(q, 50)
            word = percentiles(time_calls(lambda q, i=index: word_view(i, q), questions))
            total = percentiles(time_calls(lambda q, i=index: i.search(q, 50), questions))
        rows.append([f"{n:,}", build_s, n / build_s, peak_rss_mb(), size, word[0], total[0] - word[0], total[0],
                     total[1]])  # fmt: skip
    table(
        "Lexical index (BM25 matrices, memory-mapped): build and per-view query cost, 200 SQuAD questions",
        ["passages", "build s", "passages/s", "peak RSS MB", "on disk MB", "word view p50 ms",
         f"rest: char view on {CHAR_CANDIDATES} cand. p50 ms",
         "search p50 ms", "search p95 ms"],
        rows,
    )  # fmt: skip


if __name__ == "__main__":
    main()
