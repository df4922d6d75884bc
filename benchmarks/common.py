"""Shared helpers for the benchmarks: corpora from real sentences, real-structured vectors, timing, tables."""

from __future__ import annotations

import json
import os
import re
import resource
import sqlite3
import statistics
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
SQUAD = Path(os.environ.get("THREATQA_EVAL", ROOT.parent / "shared" / "eval")) / "squad2-dev-subset.json"
_SENTENCE = re.compile(r"(?<=[.!?])\s+(?=[A-Z0-9\"'(])")


def squad_paragraphs() -> list[str]:
    """The real paragraphs of the SQuAD 2.0 evaluation subset."""
    data = json.loads(SQUAD.read_text(encoding="utf-8"))["data"]
    return [p["context"] for article in data for p in article["paragraphs"]]


def squad_questions() -> list[str]:
    data = json.loads(SQUAD.read_text(encoding="utf-8"))["data"]
    return [qa["question"] for a in data for p in a["paragraphs"] for qa in p["qas"]]


def passages(n: int, seed: int = 0) -> list[str]:
    """n passages of 2-4 real sentences each, drawn (with replacement) from the SQuAD paragraphs.

    Sentences stay in order within a passage; the mix makes every passage distinct text while
    word statistics (vocabulary, lengths, term frequencies) stay those of real prose."""
    sentences = [s for p in squad_paragraphs() for s in _SENTENCE.split(p) if len(s) > 20]
    rng = np.random.default_rng(seed)
    starts = rng.integers(0, len(sentences) - 4, n)
    sizes = rng.integers(2, 5, n)
    return [" ".join(sentences[s : s + k]) for s, k in zip(starts.tolist(), sizes.tolist())]


def clustered_vectors(n: int, dim: int = 384, seed: int = 0, latent: int = 64) -> np.ndarray:
    """Unit vectors with the structure of text embeddings, not uniform noise.

    Text embeddings occupy a low-dimensional, clustered part of the sphere (topics, subtopics,
    near-duplicates). We draw about sqrt(n) topic centres in a `latent`-d space, spread points
    around them, embed them in `dim` dimensions with a decaying spectrum, and add small isotropic
    noise. Uniform random
    vectors would be the ANN worst case and understate recall."""
    rng = np.random.default_rng(seed)
    basis = np.linalg.qr(rng.standard_normal((dim, latent)))[0].T * np.geomspace(1.0, 0.3, latent)[:, None]
    topics = rng.standard_normal((max(16, int(np.sqrt(n))), latent)).astype(np.float32)
    out = np.empty((n, dim), dtype=np.float32)
    for start in range(0, n, 100_000):
        m = min(100_000, n - start)
        topic = topics[rng.integers(0, len(topics), m)]
        z = topic + 1.0 * rng.standard_normal((m, latent)).astype(np.float32)
        block = z @ basis.astype(np.float32) + 0.05 * rng.standard_normal((m, dim)).astype(np.float32)
        out[start : start + m] = block / np.linalg.norm(block, axis=1, keepdims=True)
    return out


def corpus_and_queries(n: int, queries: int, dim: int = 384, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """n corpus vectors and held-out query vectors from the same distribution (same topics)."""
    vectors = clustered_vectors(n + queries, dim, seed)
    return vectors[:n], np.ascontiguousarray(vectors[n:])


def percentiles(samples_ms: list[float]) -> tuple[float, float]:
    """p50 and p95 of a list of milliseconds."""
    ordered = sorted(samples_ms)
    return statistics.median(ordered), ordered[min(len(ordered) - 1, int(0.95 * len(ordered)))]


def time_calls(fn: Callable[[object], object], inputs: list[object], warmup: int = 5) -> list[float]:
    """Milliseconds of fn(x) for each input, after a few warm-up calls."""
    for x in inputs[:warmup]:
        fn(x)
    samples = []
    for x in inputs:
        t = time.perf_counter()
        fn(x)
        samples.append((time.perf_counter() - t) * 1000)
    return samples


def read_through(folder: Path) -> float:
    """Reads every file under folder once (into the page cache, where a running server's index is);
    returns the seconds it took."""
    t = time.perf_counter()
    for path in sorted(folder.rglob("*")):
        if path.is_file():
            with path.open("rb", buffering=0) as f:
                while f.read(8 << 20):
                    pass
    return time.perf_counter() - t


def time_interleaved(
    fns: dict[str, Callable[[object], object]], inputs: list[object], rounds: int = 3
) -> dict[str, list[float]]:
    """Milliseconds of each fn(x), called in turn on each input, `rounds` times over: every fn sees
    the machine in the same state, so their ratios hold even when the machine's speed drifts."""
    samples: dict[str, list[float]] = {name: [] for name in fns}
    for _ in range(rounds):
        for x in inputs:
            for name, fn in fns.items():
                t = time.perf_counter()
                fn(x)
                samples[name].append((time.perf_counter() - t) * 1000)
    return samples


def time_blocks(
    fns: dict[str, Callable[[object], object]], inputs: list[object], rounds: int = 3
) -> dict[str, list[float]]:
    """Milliseconds of each fn(x), each fn over all the inputs in a block of its own, the blocks in turn
    (A B A B ...) `rounds` times over: each fn runs back to back, as a server answering a stream of
    questions does, with its own code and data in the caches (in turn on each input, a fn in another
    process finds them full of the others'), and alternating spreads the machine's drift over all."""
    samples: dict[str, list[float]] = {name: [] for name in fns}
    for _ in range(rounds):
        for name, fn in fns.items():
            samples[name].extend(time_calls(fn, inputs))
    return samples


def peak_rss_mb() -> float:
    """Peak resident memory of this process so far, in MB.

    VmHWM rather than ru_maxrss: a child started from a large parent inherits the parent's
    ru_maxrss, which would overstate the serving process."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def folder_mb(folder: Path) -> float:
    return sum(p.stat().st_size for p in folder.rglob("*") if p.is_file()) / 1e6


def table(title: str, header: list[str], rows: list[list[object]]) -> str:
    """A Markdown table with a title line, numbers formatted compactly."""

    def fmt(value: object) -> str:
        if isinstance(value, float):
            return f"{value:.3g}" if abs(value) < 100 else f"{value:,.0f}"
        return str(value)

    lines = [f"\n### {title}\n", "| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(fmt(v) for v in row) + " |" for row in rows]
    text = "\n".join(lines)
    print(text, flush=True)
    return text


def model_settings(description: str) -> object:
    """Settings for a benchmark run with the real model: threatqa's default, or --model."""
    import argparse

    from threatqa.config import Settings

    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--model", default=None, help="hub name or local folder (default: the bundled model)")
    return Settings.load(model=parser.parse_args().model)


def file_bytes(path: Path) -> tuple[int, int]:
    """The log's bytes on disk (file and WAL), and how many of them hold the texts table and its indexes
    (0 if unknown)."""
    total = sum(p.stat().st_size for p in path.parent.glob(path.name + "*") if not p.name.endswith(".key"))
    conn = sqlite3.connect(path)
    try:
        parts = "SELECT name FROM sqlite_schema WHERE tbl_name = 'texts'"  # the table and its index
        texts = conn.execute(f"SELECT sum(pgsize) FROM dbstat WHERE name IN ({parts})").fetchone()[0] or 0
    except sqlite3.Error:  # SQLite built without the dbstat table
        texts = 0
    conn.close()
    return total, texts
