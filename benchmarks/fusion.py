"""How to combine the lexical and dense rankings, measured on the dev sets with the real model.

For every question of each evaluation set, the lexical candidates (BM25 scores) and the dense
candidates (best-window cosines) are taken once from a hybrid index built by threatqa, each
candidate given its exact cosine; then every fusion is applied to the same candidates:

- reciprocal rank fusion (k=60, what threatqa shipped before);
- convex combinations alpha x lexical + (1 - alpha) x dense with the normalisations of Bruch, Gai
  and Ingber (TOIS 2023): min-max, z-score, theoretical min-max (lexical / its max, since BM25's
  floor is 0; cosine as it is), for alpha from 0.1 to 0.9;
- lexical only and dense only as baselines.

Usage: python benchmarks/fusion.py [--model NAME_OR_FOLDER]   (default: threatqa's default model)
Prints top-1, top-5 and MRR per set; the chosen fusion is the one threatqa ships (retrieval.fuse).
"""

from __future__ import annotations

import tempfile
from collections.abc import Callable

import numpy as np
from common import model_settings

from threatqa.config import Settings
from threatqa.evaluation import _engine, default_eval_dir, dev_sets
from threatqa.retrieval import clean_question, fuse

POOL = 50
ALPHAS = (0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9)
Fusion = Callable[[dict[int, float], dict[int, float], np.ndarray], dict[int, float]]


def candidates(eval_set, settings: Settings) -> tuple[list[dict], list[str]]:
    """Per question: lexical scores, cosines (exact, for every candidate) and the dense candidates' cosines."""
    with tempfile.TemporaryDirectory() as tmp:
        engine = _engine(eval_set.documents, settings, tmp)
        index, embedder = engine.index, engine.retriever.embedder
        texts = [c.text for c in index.chunks(list(range(len(index))))]
        found = []
        for question, answers in eval_set.questions:
            text, _ = clean_question(question, 2000)
            lex_rows, lex_scores = index.lexical.search(text, POOL)
            vector = embedder.encode_query(text)
            dense_rows, dense_scores = index.dense.search(vector, POOL)
            rows = sorted(set(lex_rows.tolist()) | set(dense_rows.tolist()))
            cosines = dict(zip(rows, index.dense.scores(vector, rows).tolist()))
            good = {row for row in range(len(texts)) if any(a in texts[row] for a in answers)}
            found.append({"lexical": dict(zip(lex_rows.tolist(), lex_scores.tolist())), "cosines": cosines,
                          "dense_rows": dense_rows.tolist(), "dense": dense_scores, "good": good})  # fmt: skip
        return found, texts


def rank_of(ranked: list[int], good: set[int]) -> int | None:
    return next((i for i, row in enumerate(ranked[:10], 1) if row in good), None)


def score(found: list[dict], order: Callable[[dict], list[int]]) -> tuple[float, float, float]:
    ranks = [rank_of(order(q), q["good"]) for q in found]
    n = len(ranks)
    return (sum(r == 1 for r in ranks) / n, sum(bool(r) and r <= 5 for r in ranks) / n,
            sum(1 / r for r in ranks if r) / n)  # fmt: skip


def rrf(q: dict) -> list[int]:
    fused: dict[int, float] = {}
    for rows in (sorted(q["lexical"], key=lambda r: -q["lexical"][r]), q["dense_rows"]):
        for rank, row in enumerate(rows):
            fused[row] = fused.get(row, 0.0) + 1 / (60 + rank + 1)
    return sorted(fused, key=lambda r: (-fused[r], r))


def convex(alpha: float, norm: str) -> Callable[[dict], list[int]]:
    def order(q: dict) -> list[int]:
        lex, cos = q["lexical"], q["cosines"]
        if norm == "tmm+minmax":  # what threatqa ships
            return [row for row, _ in fuse(lex, cos, q["dense"], alpha)]
        rows = lex.keys() | set(q["dense_rows"])
        lv = np.array(list(lex.values())) if lex else np.zeros(1)
        dv = np.asarray(q["dense"])
        if norm == "minmax":
            lo, hi = lv.min(), lv.max()
            ln = {r: (lex[r] - lo) / ((hi - lo) or 1) for r in lex}
            dn = {r: (cos[r] - dv.min()) / ((dv.max() - dv.min()) or 1) for r in rows}
        elif norm == "z":
            ln = {r: (lex[r] - lv.mean()) / (lv.std() or 1) for r in lex}
            dn = {r: (cos[r] - dv.mean()) / (dv.std() or 1) for r in rows}
        else:  # theoretical min-max: BM25 / max (floor 0), cosine as it is
            ln = {r: lex[r] / (lv.max() or 1) for r in lex}
            dn = {r: cos[r] for r in rows}
        floor = min(ln.values(), default=0.0) if norm != "tmm" else 0.0
        fused = {r: alpha * ln.get(r, floor) + (1 - alpha) * dn[r] for r in rows}
        return sorted(fused, key=lambda r: (-fused[r], r))

    return order


def main() -> None:
    settings = model_settings(__doc__.split("\n")[0])
    sets = dev_sets(default_eval_dir())
    print(f"model {settings.model}; top-1 / top-5 / MRR; candidates {POOL} per side\n")
    for eval_set in sets:
        found, _ = candidates(eval_set, settings)
        print(f"{eval_set.name} ({len(found)} questions)")
        rows = [("lexical only", lambda q: sorted(q["lexical"], key=lambda r: -q["lexical"][r])),
                ("dense only", lambda q: q["dense_rows"]), ("RRF k=60 (before)", rrf)]  # fmt: skip
        for label, order in rows:
            print(f"  {label:28} " + "{:.3f} / {:.3f} / {:.3f}".format(*score(found, order)))
        for norm in ("tmm+minmax", "minmax", "z", "tmm"):
            cells = [f"{a}: " + "{:.3f}/{:.3f}/{:.3f}".format(*score(found, convex(a, norm))) for a in ALPHAS]
            print(f"  convex {norm:21} " + "  ".join(cells))
        print()
    print(f"threatqa ships: convex tmm+minmax with alpha = fusion_weight = {settings.fusion_weight}")


if __name__ == "__main__":
    main()
