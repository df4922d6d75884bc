"""What the lexical index costs and what its character view adds.

    python benchmarks/lexical.py --sizes 10000 30000    # build, size, per-view query cost
    python benchmarks/lexical.py --quality              # accuracy with and without the character view

`--quality` runs threatqa's evaluation in lexical mode (as `THREATQA_MODEL= threatqa eval`) on the
dev sets, twice over: with the questions as written, and with a seeded misspelling of them
(`misspell`: in each question, up to two words of four letters or more, not stopwords, each get
one typo: a letter dropped, two neighbours swapped, a letter doubled, or a letter replaced by a
neighbour on the keyboard; seed 0). Each is scored with both views (as shipped) and with the
word view alone (the character view's scores set to zero), so the difference is what the
character view adds.
"""

from __future__ import annotations

import argparse
import random
import re
import tempfile
import time
from pathlib import Path
from unittest import mock

import numpy as np
from common import ROOT, folder_mb, passages, peak_rss_mb, percentiles, squad_questions, table, time_calls

from threatqa.lexical import _STOPWORDS, CHAR_CANDIDATES, LexicalIndex

_WORD = re.compile(r"[A-Za-z]{4,}")
_NEIGHBOURS = dict(zip("qwertyuiopasdfghjklzxcvbnm", "wqerwtreytuyiuoiopoasdsfdgfhgjhkjlkzxcxvcbvnbmn"))


def _typo(word: str, rng: random.Random) -> str:
    """One typo in word (never in its first letter)."""
    i = rng.randrange(1, len(word) - 1)
    kind = rng.choice(("drop", "swap", "double", "replace"))
    if kind == "drop":
        return word[:i] + word[i + 1 :]
    if kind == "swap":
        return word[:i] + word[i + 1] + word[i] + word[i + 2 :]
    if kind == "double":
        return word[: i + 1] + word[i] + word[i + 1 :]
    letter = word[i].lower()
    return word[:i] + _NEIGHBOURS.get(letter, letter) + word[i + 1 :]


def misspell(question: str, rng: random.Random, words: int = 2) -> str:
    """The question with one typo in each of up to `words` of its content words of 4+ letters."""
    found = [m for m in _WORD.finditer(question) if m.group().lower() not in _STOPWORDS]
    for match in sorted(rng.sample(found, min(words, len(found))), key=lambda m: -m.start()):
        question = question[: match.start()] + _typo(match.group(), rng) + question[match.end() :]
    return question


def quality() -> None:
    from threatqa.config import Settings
    from threatqa.evaluation import EvalSet, default_eval_dir, dev_sets, evaluate_engine
    from threatqa.lexical import CharView

    settings = Settings.load(model="")
    sets = dev_sets(default_eval_dir(), ROOT / "docs")
    rng = random.Random(0)
    misspelt = [EvalSet(f"{s.name}, misspelt", s.documents, [(misspell(q, rng), a) for q, a in s.questions])
                for s in sets]  # fmt: skip
    zero = lambda self, query, firsts, lasts, buffer: (np.zeros(len(firsts)), np.zeros(len(firsts)))  # noqa: E731
    rows = []
    for eval_set in sets + misspelt:
        for label, patch in (("word + character views", None), ("word view only", zero)):
            with mock.patch.object(CharView, "scores", patch) if patch else mock.patch.object(CharView, "__doc__"):
                figures = evaluate_engine(eval_set, settings)["methods"]["lexical"]
            rows.append([eval_set.name, label, *(figures[k] for k in ("top1", "top3", "top5", "mrr"))])
    table(
        "Lexical mode (THREATQA_MODEL=), dev sets as written and with a seeded misspelling (benchmarks/lexical.py)",
        ["set", "views", "top-1", "top-3", "top-5", "MRR"],
        rows,
    )


def word_view(index: LexicalIndex, question: str) -> np.ndarray:
    return index._word_scores(index.terms(question))[1]


def speed(sizes: list[int]) -> None:
    questions, rows = squad_questions()[:200], []
    for n in sizes:
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
        text_mb = sum(len(t.encode()) for t in texts) / 1e6
        rows.append([f"{n:,}", build_s, n / build_s, peak_rss_mb(), size, size / text_mb, word[0],
                     total[0] - word[0], total[0], total[1]])  # fmt: skip
    table(
        "Lexical index (BM25 matrices, memory-mapped): build and per-view query cost, 200 SQuAD questions",
        ["passages", "build s", "passages/s", "peak RSS MB", "on disk MB", "on disk / text", "word view p50 ms",
         f"rest: char view on {CHAR_CANDIDATES} cand. p50 ms",
         "search p50 ms", "search p95 ms"],
        rows,
    )  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[10_000, 30_000])
    parser.add_argument("--quality", action="store_true", help="accuracy with and without the character view")
    args = parser.parse_args()
    if args.quality:
        quality()
    else:
        speed(args.sizes)


if __name__ == "__main__":
    main()
