"""Embedding cost and index build throughput, PyTorch vs ONNX Runtime int8, on random-weight real architectures.

    python benchmarks/embed.py [--passages 256]

Baselines from the same run: bare `SentenceTransformer.encode` (and bare ONNX encode) on the
same passages that `build_index` embeds.
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path

from common import passages, percentiles, squad_questions, table, time_calls
from models import ARCHITECTURES, build_model

from threatqa.embeddings import load_embedder
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


def build_throughput(n: int) -> None:
    """build_index on a docs folder of n passages vs bare encode of exactly the passages it embeds."""
    path = build_model("all-MiniLM-L6-v2", MODELS)
    rows = []
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

            def recording(batch: list[str], progress: bool = False, _encode=bare_encode, _seen=embedded) -> object:
                _seen.extend(batch)
                return _encode(batch, progress=progress)

            embedder.encode_documents = recording  # type: ignore[method-assign]
            t = time.perf_counter()
            report = build_index(docs, Path(tmp) / f"index-{backend}", embedder, warn=lambda m: None)
            build_s = time.perf_counter() - t
            embedder.encode_documents = bare_encode  # type: ignore[method-assign]
            if backend == "torch":
                t = time.perf_counter()
                embedder.model.encode(embedded, batch_size=32, show_progress_bar=False)  # the baseline the issue names
            else:
                t = time.perf_counter()
                bare_encode(embedded)
            bare_s = time.perf_counter() - t
            build_rate, bare_rate = report.passages / build_s, len(embedded) / bare_s
            label = "model.encode (sentence-transformers)" if backend == "torch" else "OnnxEmbedder.encode_documents"
            rows.append([backend, report.passages, build_rate, label, bare_rate, build_rate / bare_rate])
    table(
        f"Index build throughput, all-MiniLM-L6 architecture, {n} generated passages (chunk -> embed -> BM25 -> FAISS)",
        ["backend", "passages", "build passages/s", "baseline", "baseline passages/s", "ratio (goal >= 0.9)"],
        rows,
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--passages", type=int, default=256, help="passages for the throughput figures")
    args = parser.parse_args()
    model_costs(min(args.passages, 128))
    build_throughput(args.passages)


if __name__ == "__main__":
    main()
