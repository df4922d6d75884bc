"""Retrieval quality targets on the shared evaluation data (slow: indexes two corpora)."""

from __future__ import annotations

import pytest

from threatqa.config import Settings
from threatqa.evaluation import default_eval_dir, run_evaluation

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def report(tmp_path_factory: pytest.TempPathFactory) -> dict:
    eval_dir = default_eval_dir()
    if not (eval_dir / "squad2-dev-subset.json").is_file():
        pytest.fail(f"evaluation data not found at {eval_dir}")
    settings = Settings.load(model="", audit=tmp_path_factory.mktemp("audit") / "a.sqlite3")
    return run_evaluation(eval_dir, settings)


def test_squad_subset_beats_plain_bm25_by_the_target(report: dict) -> None:
    ours, plain = report["squad2-dev-subset"]["threatqa"], report["squad2-dev-subset"]["plain_bm25"]
    assert ours["top1"] >= 0.82 and ours["top5"] >= 0.97
    assert ours["top1"] > plain["top1"] and ours["mrr"] > plain["mrr"]


def test_every_seed_question_is_answered_in_the_top_three(report: dict) -> None:
    seed = report["seed-dev-questions"]["threatqa"]
    assert seed["top3"] == 1.0 and seed["misses"] == []
    assert seed["answered"] == 1.0, "no seed question abstains"
    required = {"Who won the football match last night?", "What is a good recipe for banana bread?",
                "What is the boiling point of water?"}  # fmt: skip
    assert not required & set(seed["off_topic_answered"])
