"""Retrieval accuracy on the evaluation sets, with plain BM25 on whole paragraphs beside it.

Scoring follows the evaluation README: a question counts as answered at rank k when one of the
top-k passages contains one of its answer strings (top-k accuracy, as in the DPR paper); MRR is
the mean of 1/rank of the first such passage (0 when none is in the top 10).
"""

from __future__ import annotations

import json
import re
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from threatqa.config import Settings
from threatqa.engine import Engine

KS = (1, 3, 5)
DEPTH = 10
OFF_TOPIC = (
    "Who won the football match last night?",
    "What is a good recipe for banana bread?",
    "What is the boiling point of water?",
    "How do I reset my email password?",
    "Who wrote Hamlet?",
)


@dataclass(frozen=True)
class EvalSet:
    name: str
    documents: dict[str, str]  # file name -> text
    questions: list[tuple[str, list[str]]]  # question, answer strings


def default_eval_dir() -> Path:
    """../shared/eval beside the checkout (or beside the working directory)."""
    for base in (Path.cwd(), Path(__file__).resolve().parents[2]):
        candidate = base.parent / "shared" / "eval"
        if candidate.is_dir():
            return candidate
    return Path("../shared/eval")


def load_squad(path: Path) -> EvalSet:
    """Each article is one document, its paragraphs separated by blank lines."""
    data = json.loads(path.read_text(encoding="utf-8"))
    documents, questions = {}, []
    for article in data["data"]:
        documents[f"{article['title']}.txt"] = "\n\n".join(p["context"] for p in article["paragraphs"])
        for paragraph in article["paragraphs"]:
            for qa in paragraph["qas"]:
                if not qa.get("is_impossible"):
                    questions.append((qa["question"], sorted({a["text"] for a in qa["answers"]})))
    return EvalSet("squad2-dev-subset", documents, questions)


def load_seed(path: Path, corpus_dir: Path) -> EvalSet:
    documents = {p.name: p.read_text(encoding="utf-8") for p in sorted(corpus_dir.glob("*.txt"))}
    questions = [(row["q"], row["evidence"]) for row in map(json.loads, path.read_text().splitlines()) if row]
    return EvalSet(path.stem, documents, questions)


def first_rank(passages: list[str], answers: list[str]) -> int | None:
    return next((i for i, text in enumerate(passages, 1) if any(a in text for a in answers)), None)


def accuracy(ranks: list[int | None]) -> dict[str, float]:
    n = max(len(ranks), 1)
    figures = {f"top{k}": sum(1 for r in ranks if r and r <= k) / n for k in KS}
    figures["mrr"] = sum(1 / r for r in ranks if r) / n
    return {key: round(value, 4) for key, value in figures.items()}


def evaluate_engine(eval_set: EvalSet, settings: Settings) -> dict[str, Any]:
    """Index the set's documents with threatqa and score its questions."""
    with tempfile.TemporaryDirectory(prefix="threatqa-eval-") as tmp:
        docs = Path(tmp) / "docs"
        docs.mkdir()
        for name, text in eval_set.documents.items():
            (docs / name).write_text(text, encoding="utf-8")
        run = settings.model_copy(update={"docs": docs, "index": Path(tmp) / "index", "audit": Path(tmp) / "audit"})
        engine = Engine.start(run, build="missing", log=lambda message: None)
        answers = [engine.ask(q, DEPTH) for q, _ in eval_set.questions]
        ranks = [first_rank([p.text for p in a.passages], ans) for a, (_, ans) in zip(answers, eval_set.questions)]
        off_topic = [engine.ask(q, DEPTH) for q in OFF_TOPIC]
        return accuracy(ranks) | {
            "mode": engine.status().mode,
            "passages": len(engine.index),
            "answered": round(sum(a.answered for a in answers) / max(len(answers), 1), 4),
            "off_topic_abstained": round(sum(not a.answered for a in off_topic) / len(OFF_TOPIC), 4),
            "off_topic_answered": [a.question for a in off_topic if a.answered],
            "misses": [q for (q, _), r in zip(eval_set.questions, ranks) if not r or r > 3],
        }


def evaluate_plain_bm25(eval_set: EvalSet) -> dict[str, Any]:
    """The reference: bm25s, English stopwords, no stemming, one passage per paragraph."""
    import bm25s

    paragraphs = [p for text in eval_set.documents.values() for p in re.split(r"\n\s*\n", text) if p.strip()]
    retriever = bm25s.BM25()
    retriever.index(bm25s.tokenize(paragraphs, stopwords="en", show_progress=False), show_progress=False)
    queries = bm25s.tokenize([q for q, _ in eval_set.questions], stopwords="en", show_progress=False)
    rows, _ = retriever.retrieve(queries, k=min(DEPTH, len(paragraphs)), show_progress=False)
    ranks = [first_rank([paragraphs[j] for j in row], ans) for row, (_, ans) in zip(rows, eval_set.questions)]
    return accuracy(ranks) | {"passages": len(paragraphs)}


def run_evaluation(eval_dir: Path, settings: Settings) -> dict[str, Any]:
    sets = [load_squad(eval_dir / "squad2-dev-subset.json")]
    corpus = eval_dir.parent / "corpus"
    sets.append(load_seed(eval_dir / "seed-dev-questions.jsonl", corpus if corpus.is_dir() else settings.docs))
    report = {}
    for eval_set in sets:
        report[eval_set.name] = {
            "questions": len(eval_set.questions),
            "threatqa": evaluate_engine(eval_set, settings),
            "plain_bm25": evaluate_plain_bm25(eval_set),
        }
    return report


def format_report(report: dict[str, Any]) -> str:
    lines = []
    for name, result in report.items():
        ours = result["threatqa"]
        lines.append(f"{name} ({result['questions']} questions)")
        lines.append(f"  {'method':34} {'top1':>6} {'top3':>6} {'top5':>6} {'MRR':>6} {'passages':>9}")
        for label, row in ((f"threatqa ({ours['mode']})", ours), ("plain BM25, paragraphs", result["plain_bm25"])):
            lines.append(
                f"  {label:34} {row['top1']:6.3f} {row['top3']:6.3f} {row['top5']:6.3f} {row['mrr']:6.3f} "
                f"{row['passages']:9d}"
            )
        lines.append(
            f"  answered (not abstained): {ours['answered']:.3f}; off-topic questions abstained: "
            f"{ours['off_topic_abstained']:.3f}"
        )
        if ours["misses"]:
            lines.append(f"  not in top 3: {len(ours['misses'])}")
        if ours["off_topic_answered"]:
            lines.append(f"  off-topic questions answered anyway: {'; '.join(ours['off_topic_answered'])}")
    return "\n".join(lines)
