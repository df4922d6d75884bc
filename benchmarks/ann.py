"""Exact vs approximate FAISS indexes on real-structured vectors: build time, latency, recall@10, the
error of the scores against exact cosines, size.

    python benchmarks/ann.py --sizes 10000 100000 1000000

Vectors are synthetic but clustered like text embeddings (see common.clustered_vectors); the
queries are held out from the same distribution. Recall@10 is measured against exact search
(IndexFlatIP) on the same vectors, single-threaded per query as a server answers them.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import faiss
import numpy as np
from common import corpus_and_queries, percentiles, table

from threatqa.dense import DenseConfig, ann_lists, build_dense

K = 10


def recall(found: np.ndarray, truth: np.ndarray) -> float:
    return float(np.mean([len(set(f) & set(t)) / K for f, t in zip(found.tolist(), truth.tolist())]))


def measure(
    name: str, index: faiss.Index, queries: np.ndarray, truth: np.ndarray, build_s: float, vectors: np.ndarray
) -> list[object]:
    latencies = []
    found = np.zeros((len(queries), K), dtype=np.int64)
    errors = []
    for i, q in enumerate(queries):
        t = time.perf_counter()
        scores, rows = index.search(q[None], K)
        latencies.append((time.perf_counter() - t) * 1000)
        found[i] = rows[0]
        errors.extend(np.abs(scores[0] - vectors[rows[0]] @ q).tolist())
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "x.faiss"
        faiss.write_index(index, str(path))
        size = path.stat().st_size / 1e6
    p50, p95 = percentiles(latencies)
    return [name, build_s, p50, p95, recall(found, truth), float(np.median(errors)), max(errors), size]


def run(
    n: int, n_queries: int, full: bool, hnsw: bool = True, codes: tuple[str, ...] = ("8bit", "6bit", "4bit")
) -> None:
    faiss.omp_set_num_threads(2)
    vectors, queries = corpus_and_queries(n, n_queries)
    dim = vectors.shape[1]
    t = time.perf_counter()
    flat = faiss.IndexFlatIP(dim)
    flat.add(vectors)
    rows = [measure("Flat (exact)", flat, queries, flat.search(queries, K)[1], time.perf_counter() - t, vectors)]
    truth = flat.search(queries, K)[1]
    del flat
    for m, ef_search in ((32, 64), (32, 128)) if full and hnsw else ((32, 64),) if hnsw else ():
        t = time.perf_counter()
        hnsw = faiss.IndexHNSWFlat(dim, m, faiss.METRIC_INNER_PRODUCT)
        hnsw.hnsw.efConstruction = 80
        hnsw.add(vectors)
        build = time.perf_counter() - t
        for ef in (ef_search, 256) if not full else (ef_search,):
            hnsw.hnsw.efSearch = ef
            rows.append(measure(f"HNSW{m} efC80 efSearch{ef}", hnsw, queries, truth, build, vectors))
        del hnsw
    for bits in codes:
        t = time.perf_counter()
        scanned = build_dense(vectors, DenseConfig(ann_threshold=n, codes=bits))
        rows.append(
            measure(f"SQ{bits[0]} scanned (exhaustive)", scanned, queries, truth, time.perf_counter() - t, vectors)
        )
        del scanned
    nlist = ann_lists(n)
    for bits in codes:
        t = time.perf_counter()
        ivf = build_dense(vectors, DenseConfig(ann_threshold=0, ann_codes=bits))  # as threatqa builds it
        build = time.perf_counter() - t
        for nprobe in (16, 32, 64) if full else (32,):
            ivf.nprobe = nprobe  # type: ignore[attr-defined]
            rows.append(measure(f"IVF{nlist},SQ{bits[0]} nprobe{nprobe}", ivf, queries, truth, build, vectors))  # type: ignore[arg-type]
    table(
        f"FAISS at {n:,} vectors of {dim} d (clustered synthetic vectors, {n_queries} held-out queries, k={K}; "
        "cosine error: |score - exact cosine| of the results, p50 / max)",
        ["index", "build s", "p50 ms", "p95 ms", "recall@10", "cosine error p50", "cosine error max", "size MB"],
        rows,
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[10_000, 100_000])
    parser.add_argument("--queries", type=int, default=200)
    parser.add_argument("--no-hnsw", action="store_true", help="skip HNSW (its build takes minutes at 1M)")
    parser.add_argument("--codes", nargs="+", default=["8bit", "6bit", "4bit"], help="scalar-quantiser codes to try")
    args = parser.parse_args()
    for n in args.sizes:
        run(n, args.queries, full=n >= 100_000, hnsw=not args.no_hnsw, codes=tuple(args.codes))


if __name__ == "__main__":
    main()
