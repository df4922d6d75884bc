"""Compute threads per question under concurrent questions: the `threads` setting's choice, measured.

    python benchmarks/threads.py [--seconds 20]

The shipped corpus indexed with the all-MiniLM-L6 architecture (random weights), in one process;
for each backend, `clients` threads ask questions through `Retriever.search` back to back for
--seconds, with each question allowed 1 thread (the default on 2 cores with 2 workers) or every
core (the libraries' own default, the baseline). threatqa's default (`threads` = 0) is marked.
"""

from __future__ import annotations

import argparse
import os
import shutil
import tempfile
import threading
import time
from pathlib import Path

from common import percentiles, squad_questions, table
from embed import MODELS
from models import build_model

from threatqa.config import Settings
from threatqa.engine import Engine
from threatqa.index import set_compute_threads

ROOT = Path(__file__).resolve().parents[1]


def hammer(engine: Engine, clients: int, seconds: float) -> tuple[float, float, float]:
    """Questions per second and p50/p95 latency (ms) with `clients` threads asking back to back."""
    questions = squad_questions()
    latencies: list[float] = []
    lock = threading.Lock()
    stop = time.perf_counter() + seconds

    def client(offset: int) -> None:
        i = offset
        while time.perf_counter() < stop:
            t = time.perf_counter()
            engine._live.retriever.search(questions[i % len(questions)], 5)
            with lock:
                latencies.append((time.perf_counter() - t) * 1000)
            i += clients

    threads = [threading.Thread(target=client, args=(c * 97,)) for c in range(clients)]
    begin = time.perf_counter()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    p50, p95 = percentiles(latencies)
    return len(latencies) / (time.perf_counter() - begin), p50, p95


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=20)
    parser.add_argument("--clients", type=int, nargs="+", default=[1, 2, 4])
    args = parser.parse_args()
    cores = os.cpu_count() or 1
    default = Settings.load(threads=0)
    model = build_model("all-MiniLM-L6-v2", MODELS)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        shutil.copytree(ROOT / "docs", Path(tmp) / "docs")
        for backend in ("torch", "onnx"):
            for threads in (cores, 1):
                settings = Settings.load(docs=Path(tmp) / "docs", index=Path(tmp) / f"index-{backend}",
                                         audit=Path(tmp) / "audit.sqlite3", model=str(model), backend=backend,
                                         threads=threads)  # fmt: skip
                engine = Engine.start(settings, build="missing", log=lambda m: None)
                for clients in args.clients:
                    rate, p50, p95 = hammer(engine, clients, args.seconds)
                    chosen = default.question_threads()
                    label = f"{threads} (threatqa default)" if threads == chosen else str(threads)
                    rows.append([backend, label, clients, rate, p50, p95])
        set_compute_threads(cores)
    table(
        f"Questions answered with concurrent clients, {cores} cores, shipped corpus, all-MiniLM-L6 architecture "
        f"({args.seconds:.0f} s each; Retriever.search)",
        ["backend", "threads per question", "clients", "questions/s", "p50 ms", "p95 ms"],
        rows,
    )


if __name__ == "__main__":
    main()
