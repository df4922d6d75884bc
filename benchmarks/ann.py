"""Exact vs approximate FAISS indexes on real-structured vectors: build time, latency, recall@10, size.

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

K = 10


def recall(found: np.ndarray, truth: np.ndarray) -> float:
    return float(np.mean([len(set(f) & set(t)) / K for f, t in zip(found.tolist(), truth.tolist())]))


def measure(name: str, index: faiss.Index, queries: np.ndarray, truth: np.ndarray, build_s: float) -> list[object]:
    latencies = []
    found = np.zeros((len(queries), K), dtype=np.int64)
    for i, q in enumerate(queries):
        t = time.perf_counter()
        _, rows = index.search(q[None], K)
        latencies.append((time.perf_counter() - t) * 1000)
        found[i] = rows[0]
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "x.faiss"
        faiss.write_index(index, str(path))
        size = path.stat().st_size / 1e6
    p50, p95 = percentiles(latencies)
    return [name, build_s, p50, p95, recall(found, truth), size]


def run(n: int, n_queries: int, full: bool, hnsw: bool = True) -> None:
    faiss.omp_set_num_threads(2)
    vectors, queries = corpus_and_queries(n, n_queries)
    dim = vectors.shape[1]
    t = time.perf_counter()
    flat = faiss.IndexFlatIP(dim)
    flat.add(vectors)
    rows = [measure("Flat (exact)", flat, queries, flat.search(queries, K)[1], time.perf_counter() - t)]
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
            rows.append(measure(f"HNSW{m} efC80 efSearch{ef}", hnsw, queries, truth, build))
        del hnsw
    nlist = int(max(64, min(4096, 2 ** round(np.log2(4 * np.sqrt(n))))))
    t = time.perf_counter()
    ivf = faiss.IndexIVFScalarQuantizer(
        faiss.IndexFlatIP(dim), dim, nlist, faiss.ScalarQuantizer.QT_8bit, faiss.METRIC_INNER_PRODUCT
    )
    sample = vectors[np.random.default_rng(0).choice(n, min(n, 64 * nlist), replace=False)]
    ivf.cp.niter = 10
    ivf.train(sample)
    ivf.add(vectors)
    build = time.perf_counter() - t
    for nprobe in (8, 16, 32, 64):
        ivf.nprobe = nprobe
        rows.append(measure(f"IVF{nlist},SQ8 nprobe{nprobe}", ivf, queries, truth, build))
    table(
        f"FAISS at {n:,} vectors of {dim} d (clustered synthetic vectors, {n_queries} held-out queries, k={K})",
        ["index", "build s", "p50 ms", "p95 ms", "recall@10", "size MB"],
        rows,
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[10_000, 100_000])
    parser.add_argument("--queries", type=int, default=200)
    parser.add_argument("--no-hnsw", action="store_true", help="skip HNSW (its build takes minutes at 1M)")
    args = parser.parse_args()
    for n in args.sizes:
        run(n, args.queries, full=n >= 100_000, hnsw=not args.no_hnsw)


if __name__ == "__main__":
    main()
