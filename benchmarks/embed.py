"""Embedding cost and index build throughput, PyTorch vs ONNX Runtime int8, on random-weight real architectures.

    python benchmarks/embed.py [--passages 256]

Baselines from the same run: bare `SentenceTransformer.encode` (and bare ONNX encode) on the
same passages that `build_index` embeds, timed in turn with the build, --rounds times. The build
comparison runs the real model (the bundled all-MiniLM-L6-v2) when it is installed, else random
weights of its architecture (the cost is the same: the same layers over the same tokens). Windows
cover each passage once, so the texts embedded are the documents' text, not an inflated copy; the
table gives their characters against the documents' to show it.
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time
from pathlib import Path

from common import passages, percentiles, squad_questions, table, time_calls
from models import ARCHITECTURES, build_model

from threatqa.embeddings import bundled_model_folder, load_embedder
from threatqa.index import build_index

MODELS = Path(os.environ.get("THREATQA_BENCH_MODELS", Path(tempfile.gettempdir()) / "threatqa-bench-models"))


def long_passages(n: int) -> list[str]:
    """Passages of about 200 word-piece tokens (roughly 900 characters of prose)."""
    short = passages(n * 3, seed=1)
    return [" ".join(short[i * 3 : i * 3 + 3])[:900] for i in range(n)]


def model_costs(n: int) -> None:
    rows = []
    texts, questions = long_passages(n), squad_questions()[:100]
    for arch in ARCHITECTURES:
        path = build_model(arch, MODELS)
        for backend in ("torch", "onnx"):
            embedder = load_embedder(str(path), backend=backend)
            p50, p95 = percentiles(time_calls(embedder.encode_query, questions))
            embedder.encode_documents(texts[:8])
            t = time.perf_counter()
            embedder.encode_documents(texts)
            rate = len(texts) / (time.perf_counter() - t)
            rows.append([arch, "PyTorch fp32" if backend == "torch" else "ONNX Runtime int8", p50, p95, rate])
    table(
        f"Embedding cost ({os.cpu_count()} cores; random weights, real architectures; {n} passages of ~200 tokens)",
        ["model", "backend", "query p50 ms", "query p95 ms", "passages/s"],
        rows,
    )


def build_rates(n: int, rounds: int) -> tuple[str, list[dict[str, object]]]:
    """build_index on a docs folder of n passages vs bare encode of exactly the passages it embeds,
    timed in turn `rounds` times (a full build into a new folder each time); medians compared, as
    a single timing of PyTorch on this machine varies by up to 20% from run to run. Returns the
    weights used and, per backend, the figures."""
    path = bundled_model_folder() or build_model("all-MiniLM-L6-v2", MODELS)
    weights = "real weights" if path == bundled_model_folder() else "random weights"
    rows: list[dict[str, object]] = []
    with tempfile.TemporaryDirectory() as tmp:
        docs = Path(tmp) / "docs"
        docs.mkdir()
        texts = passages(n, seed=2)
        for i in range(0, n, 50):
            (docs / f"report-{i:06d}.txt").write_text("\n\n".join(texts[i : i + 50]), encoding="utf-8")
        for backend in ("torch", "onnx"):
            embedder = load_embedder(str(path), backend=backend)
            embedder.encode_documents(texts[:8])  # both sides timed warm: sessions created, weights paged in
            embedded: list[str] = []
            bare_encode = embedder.encode_documents

            def recording(batch: list[str], batch_size: int = 32, _encode=bare_encode, _seen=embedded) -> object:
                _seen.extend(batch)
                return _encode(batch, batch_size=batch_size)

            # the baseline: model.encode for PyTorch (the one the issue names), the embedder's own for ONNX
            bare = embedder.model.encode if backend == "torch" else bare_encode
            build_times, bare_times = [], []
            for round_ in range(rounds):
                embedded.clear()
                embedder.encode_documents = recording  # type: ignore[method-assign]
                t = time.perf_counter()
                report = build_index(docs, Path(tmp) / f"index-{backend}-{round_}", embedder, warn=lambda m: None)
                build_times.append(time.perf_counter() - t)
                embedder.encode_documents = bare_encode  # type: ignore[method-assign]
                t = time.perf_counter()
                bare(embedded, batch_size=32)
                bare_times.append(time.perf_counter() - t)
            # the same texts (the passages' windows) through the whole build and through bare encoding
            rows.append({
                "backend": backend, "passages": report.passages, "documents": report.documents,
                "embedded_chars": sum(map(len, embedded)), "text_chars": sum(len(t) for t in texts),
                "texts": len(embedded), "build_s": statistics.median(build_times),
                "bare_s": statistics.median(bare_times), "spread": max(bare_times) / min(bare_times) - 1,
            })  # fmt: skip
    return weights, rows


def build_throughput(n: int, rounds: int) -> None:
    weights, figures = build_rates(n, rounds)
    rows = []
    for f in figures:
        build_rate, bare_rate = f["texts"] / f["build_s"], f["texts"] / f["bare_s"]  # type: ignore[operator]
        label = "model.encode (sentence-transformers)" if f["backend"] == "torch" else "OnnxEmbedder.encode_documents"
        rows.append([f["backend"], f["passages"], f"{f['embedded_chars'] / f['text_chars']:.2f}", build_rate,  # type: ignore[operator]
                     label, bare_rate, f"{f['spread']:.0%}", build_rate / bare_rate])  # fmt: skip
    table(
        f"Index build throughput, all-MiniLM-L6-v2 ({weights}), {n} generated passages (chunk -> embed -> BM25 "
        f"-> FAISS), median of {rounds} rounds, each side in turn",
        ["backend", "passages", "chars embedded (windows + vocabulary words) / chars of text", "build windows/s",
         "baseline", "baseline windows/s", "baseline spread", "ratio (goal >= 0.9)"],
        rows,
    )  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--passages", type=int, default=256, help="passages for the throughput figures")
    parser.add_argument("--rounds", type=int, default=3, help="times each side of the build comparison is timed")
    parser.add_argument("--build-only", action="store_true", help="only the build throughput comparison")
    args = parser.parse_args()
    if not args.build_only:
        model_costs(min(args.passages, 128))
    build_throughput(args.passages, args.rounds)


if __name__ == "__main__":
    main()
