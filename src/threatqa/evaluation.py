"""Retrieval accuracy on the evaluation sets: hybrid, lexical and dense-only from one index,
with plain BM25 on whole paragraphs beside them; and abstention on the calibration questions.

Scoring follows the evaluation README: a question counts as answered at rank k when one of the
top-k passages contains one of its answer strings (top-k accuracy, as in the DPR paper); MRR is
the mean of 1/rank of the first such passage (0 when none is in the top 10).

Abstention is measured on `tests/data/abstention.jsonl`: on-topic paraphrases of facts in the
corpus, near-domain questions the corpus does not answer, and off-topic ones, each marked for
the half that calibrates the rule or the half held out to report it.
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
from threatqa.retrieval import Retriever

KS = (1, 3, 5)
DEPTH = 10
ABSTENTION_FILE = Path(__file__).resolve().parents[2] / "tests" / "data" / "abstention.jsonl"


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


def dev_sets(eval_dir: Path, fallback_corpus: Path | None = None) -> list[EvalSet]:
    """The SQuAD subset and the seed questions over the shared corpus (or `fallback_corpus`)."""
    corpus = eval_dir.parent / "corpus"
    corpus = corpus if corpus.is_dir() or fallback_corpus is None else fallback_corpus
    return [load_squad(eval_dir / "squad2-dev-subset.json"), load_seed(eval_dir / "seed-dev-questions.jsonl", corpus)]


def first_rank(passages: list[str], answers: list[str]) -> int | None:
    return next((i for i, text in enumerate(passages, 1) if any(a in text for a in answers)), None)


def accuracy(ranks: list[int | None]) -> dict[str, float]:
    n = max(len(ranks), 1)
    figures = {f"top{k}": sum(1 for r in ranks if r and r <= k) / n for k in KS}
    figures["mrr"] = sum(1 / r for r in ranks if r) / n
    return {key: round(value, 4) for key, value in figures.items()}


def _engine(documents: dict[str, str], settings: Settings, tmp: str) -> Engine:
    docs = Path(tmp) / "docs"
    docs.mkdir()
    for name, text in documents.items():
        (docs / name).write_text(text, encoding="utf-8")
    run = settings.model_copy(update={"docs": docs, "index": Path(tmp) / "index", "audit": Path(tmp) / "audit"})
    return Engine.start(run, build="missing", log=lambda message: None)


def methods(engine: Engine) -> dict[str, Retriever]:
    """The engine's own ranking, and, on a hybrid index, lexical-only and dense-only on the same index."""
    retriever = engine.retriever
    if retriever.embedder is None:
        return {"lexical": retriever}
    return {"hybrid": retriever, "lexical": retriever.with_weight(1.0), "dense": retriever.with_weight(0.0)}


def evaluate_engine(eval_set: EvalSet, settings: Settings) -> dict[str, Any]:
    """Index the set's documents with threatqa and score its questions with each method."""
    with tempfile.TemporaryDirectory(prefix="threatqa-eval-") as tmp:
        engine = _engine(eval_set.documents, settings, tmp)
        report: dict[str, Any] = {"passages": len(engine.index), "methods": {}}
        for name, retriever in methods(engine).items():
            found = [retriever.search(q, DEPTH) for q, _ in eval_set.questions]
            ranks = [first_rank([h.chunk.text for h in r.hits], ans) for r, (_, ans) in zip(found, eval_set.questions)]
            report["methods"][name] = accuracy(ranks) | {
                "answered": round(sum(r.answered for r in found) / max(len(found), 1), 4),
                "misses": [q for (q, _), r in zip(eval_set.questions, ranks) if not r or r > 3],
            }
        return report


def load_abstention(path: Path = ABSTENTION_FILE) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


def abstention_features(questions: list[dict[str, Any]], documents: dict[str, str], settings: Settings) -> list[dict]:
    """Each question with whether threatqa answered it and, per passage shown, the two scores the
    rule reads: (cosine, term match), or (None, coverage) in lexical mode."""
    with tempfile.TemporaryDirectory(prefix="threatqa-eval-") as tmp:
        retriever = _engine(documents, settings, tmp).retriever
        rows = []
        for question in questions:
            result = retriever.search(question["q"], 5)
            matches = retriever.term_matches(result.question, [h.chunk for h in result.hits])
            rows.append(question | {
                "answered": result.answered,
                "scores": [(h.dense_score, h.relevance if h.dense_score is None else match)
                           for h, match in zip(result.hits, matches)],
                "found": first_rank([h.chunk.text for h in result.hits], question["evidence"] or ["\0"]),
            })  # fmt: skip
        return rows


def abstention_rates(rows: list[dict[str, Any]], split: str = "holdout") -> dict[str, float]:
    """Share of on-topic questions abstained, and of off-topic and near-domain questions answered."""
    chosen = [r for r in rows if r["split"] == split]

    def rate(kind: str, answered: bool) -> float:
        of_kind = [r for r in chosen if r["kind"] == kind]
        return round(sum(r["answered"] == answered for r in of_kind) / max(len(of_kind), 1), 4)

    off = [r for r in chosen if r["kind"] != "on-topic"]
    return {
        "on_topic_abstained": rate("on-topic", False),
        "off_topic_answered": round(sum(r["answered"] for r in off) / max(len(off), 1), 4),
        "near_domain_answered": rate("near-domain", True),
        "questions": len(chosen),
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
    sets = dev_sets(eval_dir, settings.docs)
    seed = sets[1]
    report: dict[str, Any] = {}
    for eval_set in sets:
        report[eval_set.name] = {
            "questions": len(eval_set.questions),
            "threatqa": evaluate_engine(eval_set, settings),
            "plain_bm25": evaluate_plain_bm25(eval_set),
        }
    if ABSTENTION_FILE.is_file():
        rows = abstention_features(load_abstention(), seed.documents, settings)
        report["abstention"] = {split: abstention_rates(rows, split) for split in ("calibrate", "holdout")}
    return report


def format_report(report: dict[str, Any]) -> str:
    lines = []
    for name, result in report.items():
        if name == "abstention":
            continue
        ours = result["threatqa"]
        lines.append(f"{name} ({result['questions']} questions)")
        lines.append(f"  {'method':34} {'top1':>6} {'top3':>6} {'top5':>6} {'MRR':>6} {'passages':>9}")
        rows = [(f"threatqa, {method}", row, ours["passages"]) for method, row in ours["methods"].items()]
        rows.append(("plain BM25, paragraphs", result["plain_bm25"], result["plain_bm25"]["passages"]))
        for label, row, passages in rows:
            lines.append(
                f"  {label:34} {row['top1']:6.3f} {row['top3']:6.3f} {row['top5']:6.3f} {row['mrr']:6.3f} {passages:9d}"
            )
        first = next(iter(ours["methods"].values()))
        lines.append(f"  answered (not abstained): {first['answered']:.3f}; not in top 3: {len(first['misses'])}")
    for split, rates in report.get("abstention", {}).items():
        lines.append(
            f"abstention, {split} half ({rates['questions']} questions): on-topic abstained "
            f"{rates['on_topic_abstained']:.3f}, off-topic answered {rates['off_topic_answered']:.3f}, "
            f"near-domain answered {rates['near_domain_answered']:.3f}"
        )
    return "\n".join(lines)
