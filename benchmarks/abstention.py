"""Calibrate the abstention rule on one half of tests/data/abstention.jsonl, report it on the other.

The questions (on-topic paraphrases of facts in the corpus, near-domain crime and policing
questions it does not answer, off-topic ones) are asked of the shipped corpus, with the real
model (hybrid) and without it (lexical). With the model, the rule's parameters are chosen on the
`calibrate` half by grid search: the fewest on-topic questions abstained, subject to at most 10%
of the other questions and at most 20% of the near-domain ones answered (ties: fewer answered);
then the held-out half is scored with them and with the settings threatqa ships. In lexical mode
(a fallback the user chooses) term coverage alone cannot meet those limits without turning away
about half the real questions, so the shipped threshold is kept where it answers them, and the
trade-off is printed for each threshold.

Usage: python benchmarks/abstention.py [--model NAME_OR_FOLDER]
"""

from __future__ import annotations

import itertools
from collections.abc import Callable

import numpy as np
from common import model_settings

from threatqa.evaluation import abstention_features, default_eval_dir, dev_sets, load_abstention
from threatqa.retrieval import answers

OFF_MAX, NEAR_MAX = 0.10, 0.20


def rates(rows: list[dict], split: str, answered: Callable[[dict], bool]) -> tuple[float, float, float]:
    """(on-topic abstained, others answered, near-domain answered) on one half."""
    chosen = [r for r in rows if r["split"] == split]
    on = [answered(r) for r in chosen if r["kind"] == "on-topic"]
    off = [answered(r) for r in chosen if r["kind"] != "on-topic"]
    near = [answered(r) for r in chosen if r["kind"] == "near-domain"]
    return 1 - float(np.mean(on)), float(np.mean(off)), float(np.mean(near))


def calibrate(rows: list[dict], rule: Callable[..., Callable[[dict], bool]], grid: list[tuple]) -> tuple:
    scored = [(rates(rows, "calibrate", rule(*params)), params) for params in grid]
    feasible = [item for item in scored if item[0][1] <= OFF_MAX and item[0][2] <= NEAR_MAX] or scored
    return min(feasible, key=lambda item: (item[0][0], item[0][1] + item[0][2]))[1]


def hybrid_rule(threshold: float, weight: float) -> Callable[[dict], bool]:
    return lambda row: answers(row["scores"], 1.0, threshold, weight)


def lexical_rule(threshold: float) -> Callable[[dict], bool]:
    return lambda row: answers([(None, coverage) for _, coverage in row["scores"]], threshold, 1.0, 0.0)


def show(label: str, values: tuple[float, float, float]) -> str:
    return f"  {label:44} on-topic abstained {values[0]:.3f}  off-topic answered {values[1]:.3f}  " \
           f"near-domain answered {values[2]:.3f}"  # fmt: skip


def main() -> None:
    settings = model_settings(__doc__.split("\n")[0])
    corpus = dev_sets(default_eval_dir())[1].documents
    questions = load_abstention()
    counts = {(k, s): sum(q["kind"] == k and q["split"] == s for q in questions)
              for k in ("on-topic", "near-domain", "off-topic") for s in ("calibrate", "holdout")}  # fmt: skip
    print(f"questions (kind, half): {counts}")

    hybrid = abstention_features(questions, corpus, settings)
    steps = [round(x, 3) for x in np.arange(0.30, 1.601, 0.025)]
    weights = [round(x, 3) for x in np.arange(0.0, 1.501, 0.05)]
    threshold, weight = calibrate(hybrid, hybrid_rule, list(itertools.product(steps, weights)))
    print(f"\nhybrid ({settings.model}): calibrated min_dense_score={threshold} coverage_weight={weight}")
    for split in ("calibrate", "holdout"):
        print(show(f"{split} half, calibrated", rates(hybrid, split, hybrid_rule(threshold, weight))))
    shipped = hybrid_rule(settings.min_dense_score, settings.coverage_weight)
    print(show(f"holdout half, shipped ({settings.min_dense_score}, {settings.coverage_weight})",
               rates(hybrid, "holdout", shipped)))  # fmt: skip
    print(show("holdout half, answered by the engine", rates(hybrid, "holdout", lambda r: r["answered"])))

    lexical = abstention_features(questions, corpus, settings.model_copy(update={"model": ""}))
    print("\nlexical (no model): min_relevance; on-topic abstained / off-topic answered / near-domain answered")
    for threshold in (0.1, 0.15, 0.2, 0.25, 0.3, 0.35, 0.4, 0.5):
        cells = ["{:.3f} / {:.3f} / {:.3f}".format(*rates(lexical, split, lexical_rule(threshold)))
                 for split in ("calibrate", "holdout")]  # fmt: skip
        mark = "  <- shipped" if threshold == settings.min_relevance else ""
        print(f"  {threshold:<5} calibrate {cells[0]}   holdout {cells[1]}{mark}")


if __name__ == "__main__":
    main()
