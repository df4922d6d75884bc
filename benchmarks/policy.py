"""The cost of need-to-know filtering (issue 16): question p50 for users with 1, 3 and 30 groups
against the same index without a policy.

    python benchmarks/policy.py --passages 100000 [--mode lexical|hybrid] [--keep DIR]

A docs folder of generated passages (real SQuAD sentences, 100 a file) is indexed once; its files
are spread over 30 folders g00..g29, and a policy file gives folder gNN to group gNN. One process
opens the index twice, without and with the policy, and times on each SQuAD question, in turn, a
search and answer as `Engine.ask` makes it without its audit record (`Engine._answer`): no policy,
then users in groups g00; g00-g02; g00-g29 (everything readable, so BM25 statistics over the
subset equal the full index's and the answers are the same).

Timing channel: a readable set's BM25 statistics are summed from its labels' counts on its first
question and kept (lexical_subset.py). How much longer that first question takes is what a user
could time to learn whether someone with the same groups asked recently; it is measured on
--channel questions per user, each asked with the set's statistics dropped, then again with them
kept, and the median difference reported; then the same with anything the dense side keeps for a
filter dropped too (it used to keep an exact index of the chosen windows; it now keeps nothing).
The labels' counts are made once, when the engine labels an index version: at start, part of the
start time printed.

In hybrid mode the vectors are real-structured but synthetic (query.py's SyntheticEmbedder over a
random-weight MiniLM-L6 architecture, ONNX int8); in lexical mode there is no model.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import tempfile
import time
from pathlib import Path

from common import passages, peak_rss_mb, squad_questions, table, time_interleaved

from threatqa.config import Settings
from threatqa.engine import Engine
from threatqa.index import DenseConfig, build_index
from threatqa.policy import Access

PER_FILE = 100
GROUPS = 30
USERS = {"1 group": 1, "3 groups": 3, "30 groups": 30}


def build(n: int, folder: Path, mode: str) -> dict[str, object]:
    docs = folder / "docs"
    texts = passages(n, seed=3)
    for i in range(0, n, PER_FILE):
        number = i // PER_FILE
        path = docs / f"g{number % GROUPS:02d}" / f"report-{number:06d}.txt"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text("\n\n".join(texts[i : i + PER_FILE]), encoding="utf-8")
    rules = [f'[[rule]]\npaths = ["g{g:02d}/*"]\ngroups = ["g{g:02d}"]\n' for g in range(GROUPS)]
    (folder / "policy.toml").write_text("\n".join(rules), encoding="utf-8")
    embedder, model = None, ""
    if mode == "hybrid":
        from embed import MODELS
        from models import build_model
        from query import SyntheticEmbedder

        from threatqa.embeddings import load_embedder

        model = str(build_model("all-MiniLM-L6-v2", MODELS))
        embedder = SyntheticEmbedder(load_embedder(model, backend="onnx"))
    t = time.perf_counter()
    report = build_index(docs, folder / "index", embedder, warn=lambda m: None, dense=DenseConfig(),
                         allow_lexical=mode == "lexical")  # type: ignore[arg-type]  # fmt: skip
    return {"build_s": time.perf_counter() - t, "passages": report.passages, "model": model, "mode": mode}


def measure(folder: Path, built: dict[str, object], queries: int, channel: int) -> dict[str, object]:
    base = {"docs": folder / "docs", "index": folder / "index", "audit": folder / "audit.sqlite3",
            "model": built["model"], "backend": "onnx"}  # fmt: skip
    plain = Engine.start(Settings.load(**base), build="never", log=lambda m: None)
    t = time.perf_counter()
    policed = Engine.start(Settings.load(**base, policy=str(folder / "policy.toml")), build="never", log=lambda m: None)
    start_s = time.perf_counter() - t
    questions = squad_questions()
    for question in questions[queries : queries + 50]:  # warm: compiled loops, page cache
        plain._answer(plain._live, question, 5, None)
    users = {name: Access.of(name, [f"g{g:02d}" for g in range(count)]) for name, count in USERS.items()}
    policed.labels()  # labelled at start (counting every label's passages): nothing left to do
    state = policed._labelled
    dense = policed._live.retriever.index.dense
    first_ms: dict[str, list[float]] = {}
    for name, access in users.items():  # a readable set's first question against the same question again
        key, first_ms[name] = state.labels.key(access), []  # type: ignore[union-attr]
        for forget_dense in (False, True):
            extra = []
            for question in questions[queries : queries + channel]:
                state.subsets.pop(key, None)  # type: ignore[union-attr]
                if forget_dense:  # what dense.py kept for the filter, if anything (it keeps nothing now)
                    getattr(dense, "_subsets", {}).clear()
                t = time.perf_counter()
                policed._answer(policed._live, question, 5, None, access)
                first = time.perf_counter() - t
                t = time.perf_counter()
                policed._answer(policed._live, question, 5, None, access)
                extra.append((first - (time.perf_counter() - t)) * 1000)
            first_ms[name].append(statistics.median(extra))
    kept = {name: state.subsets[state.labels.key(access)][1] for name, access in users.items()}  # type: ignore[union-attr]
    stats_mb = {name: stats.nbytes / 1e6 if stats is not None else 0.0 for name, stats in kept.items()}
    fns = {"no policy": lambda q: plain._answer(plain._live, q, 5, None)}
    for name, access in users.items():
        fns[name] = lambda q, a=access: policed._answer(policed._live, q, 5, None, a)  # type: ignore[misc]
    samples = time_interleaved(fns, questions[:queries])
    p50 = {name: statistics.median(values) for name, values in samples.items()}
    readable = {name: policed.status(access).passages for name, access in users.items()}
    same = sum(
        [p.citation.source for p in plain._answer(plain._live, q, 5, None)[0].passages]
        == [p.citation.source for p in policed._answer(policed._live, q, 5, None, users["30 groups"])[0].passages]
        for q in questions[:50]
    )
    labels_kept = [*getattr(state, "parts", {}).values(), *getattr(state, "windows", {}).values()]
    parts_mb = sum(part.nbytes for part in labels_kept) / 1e6  # lexical counts and dense parts
    return {"p50": p50, "first_ms": first_ms, "stats_mb": stats_mb, "readable": readable, "start_s": start_s,
            "parts_mb": parts_mb, "same_top5_of_50": same, "rss_mb": peak_rss_mb()}  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--passages", type=int, default=100_000)
    parser.add_argument("--mode", choices=("lexical", "hybrid"), default="lexical")
    parser.add_argument("--queries", type=int, default=300)
    parser.add_argument("--channel", type=int, default=30, help="questions per user for the timing channel")
    parser.add_argument("--keep", type=Path, help="build under this folder and keep it (reused next run)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        folder = args.keep / f"{args.mode}-{args.passages}" if args.keep else Path(tmp)
        if (folder / "built.json").is_file():
            built = json.loads((folder / "built.json").read_text())
        else:
            built = build(args.passages, folder, args.mode)
            (folder / "built.json").write_text(json.dumps(built))
        result = measure(folder, built, args.queries, args.channel)
    base = result["p50"]["no policy"]
    rows = [["no policy", f"{built['passages']:,}", base, 1.0, "-", "-", "-"]]
    for name in USERS:
        p50 = result["p50"][name]
        rows.append([name, f"{result['readable'][name]:,}", p50, p50 / base, *result["first_ms"][name],
                     result["stats_mb"][name]])  # fmt: skip
    table(
        f"Search + answer p50 in ms, {built['mode']} mode, {built['passages']:,} passages in {GROUPS} groups, "
        f"{args.queries} SQuAD questions x 3 rounds, interleaved, {os.cpu_count()} cores",
        ["user", "readable passages", "p50 ms", "/ no policy (goal <= 1.10)",
         "first question of the set, extra ms: BM25 statistics", "... and the dense filter", "statistics kept, MB"],
        rows,
    )  # fmt: skip
    print(f"\nbuild {built['build_s']:.0f} s; engine start with the policy (labelling: every label's BM25 counts "
          f"and dense part) {result['start_s']:.2f} s, kept {result['parts_mb']:.1f} MB; "
          f"peak RSS {result['rss_mb']:.0f} MB; 30 groups (all readable) and no policy give the same top 5 for "
          f"{result['same_top5_of_50']} of 50 questions")  # fmt: skip


if __name__ == "__main__":
    main()
