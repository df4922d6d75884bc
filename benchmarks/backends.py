"""Which backend embeds best for the cost: PyTorch (fp32), ONNX Runtime fp32 and ONNX Runtime int8,
with the real model, in one run.

For each backend: retrieval on the dev sets (`threatqa eval`'s figures, hybrid), the time to embed
one question (p50 and p95 over the SQuAD questions, one thread, as a server's worker does), the
rate at which passages' windows embed (every core, as an index build does), and how far its
vectors are from PyTorch's (cosine, min over the SQuAD windows). The ONNX export is made once
into the user's cache folder and reused; its one-off time is printed when it happens here.

Usage: python benchmarks/backends.py
"""

from __future__ import annotations

import os
import statistics
import time

import numpy as np

from threatqa.config import Settings
from threatqa.dense import compute_threads, set_compute_threads
from threatqa.embeddings import BUNDLED_MODEL, load_embedder
from threatqa.evaluation import default_eval_dir, load_squad, run_evaluation

BACKENDS = ("torch", "onnx-fp32", "onnx")


def main() -> None:
    eval_dir = default_eval_dir()
    squad = load_squad(eval_dir / "squad2-dev-subset.json")
    questions = [q for q, _ in squad.questions]
    passages = [p for text in squad.documents.values() for p in text.split("\n\n")]
    sentences = [s.strip() + "." for p in passages for s in p.split(". ") if s.strip()]
    reference = None
    print(f"model {BUNDLED_MODEL}; {len(questions)} questions, {len(sentences)} sentence-sized texts\n")
    print(f"  {'backend':10} {'top1':>6} {'top5':>6} {'MRR':>6} {'q p50 ms':>9} {'q p95 ms':>9} {'texts/s':>8} "
          f"{'min cos vs torch':>16}")  # fmt: skip
    for backend in BACKENDS:
        began = time.perf_counter()
        embedder = load_embedder(BUNDLED_MODEL, backend=backend, query_threads=1)
        loaded = time.perf_counter() - began
        set_compute_threads(1)
        times = []
        for question in questions:
            start = time.perf_counter()
            embedder.encode_query(question)
            times.append((time.perf_counter() - start) * 1000)
        with compute_threads(os.cpu_count() or 1):
            start = time.perf_counter()
            vectors = embedder.encode_documents(sentences)
            rate = len(sentences) / (time.perf_counter() - start)
        reference = vectors if reference is None else reference
        agreement = float((vectors * reference).sum(axis=1).min())
        report = run_evaluation(eval_dir, Settings.load(backend=backend))
        squad_row = report["squad2-dev-subset"]["threatqa"]["methods"]["hybrid"]
        p95 = float(np.percentile(times, 95))
        p50 = statistics.median(times)
        print(f"  {backend:10} {squad_row['top1']:6.3f} {squad_row['top5']:6.3f} {squad_row['mrr']:6.3f} "
              f"{p50:9.2f} {p95:9.2f} {rate:8.0f} {agreement:16.4f}   (load {loaded:.1f} s)")  # fmt: skip
        seed = report["seed-dev-questions"]["threatqa"]["methods"]["hybrid"]
        print(f"  {'':10} seed-dev top1 {seed['top1']:.3f}; abstention holdout {report['abstention']['holdout']}")


if __name__ == "__main__":
    main()
