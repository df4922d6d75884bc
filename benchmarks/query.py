"""Query latency, memory and index size at a given corpus size, against a bare embed + FAISS baseline.

    python benchmarks/query.py --sizes 1000 100000

Each size: a docs folder of generated passages (real SQuAD sentences) is indexed with
`build_index`; up to --real-vectors passages the vectors come from the real code path (the
ONNX int8 all-MiniLM-L6 architecture), above it from `clustered_vectors` (said so in the table).
Then a fresh process opens the index as the server does and times, over real questions:
bare (one query embedding + one FAISS search), the lexical search alone, `Retriever.search`,
search + answer (the cited answer as `Engine.ask` builds it: the issue's "embedding + search +
fusion + formatting"), `Engine.ask` (plus the audit record), and POST /api/ask through a real
server, one kept-alive HTTP connection, as a portal's proxy holds it: the app (`create_app`) served
by uvicorn in a process of its own on a loopback port, as deployed, and the same app served in a
thread of this process, where the client shares the interpreter lock with the server (an empty
GET /api/health round trip on the server process is timed too, the floor of any route). Each is
timed with the index in the page cache (its files are read through once, as a running server's
have been) and after a pass over other questions (nothing caches answers). Bare, search +
answer, `Engine.ask` and both /api/ask are timed in turn on each question, three rounds over, so
their ratios (the goals: search + answer <= 1.3x bare, /api/ask <= 1.5x search + answer) compare
like with like even when the machine's speed drifts. Among all five, the server process answers
each question after this process has run it three times through its own copy of the model and
index, which empties the shared cache of the server's (the in-process sides share one copy and warm
it for one another): so the /api/ask goal is also timed with its two sides alone in turn (search +
answer, then /api/ask, on each question, three rounds over), and in blocks, each over all the
questions back to back as a server answers a stream of them, the blocks alternating three rounds
over. --keep DIR keeps the built corpora for reruns.

    python benchmarks/query.py --sizes 10000 --keep /tmp/keepq --against /tmp/before/src

--against SRC times only POST /api/ask, of two servers at once: this tree's and one run from SRC
(another checkout's `src` folder, e.g. a `git worktree` of the commit before a change), each in a
process of its own with its own audit log, in turn on each question (the order swapped every
round) and in blocks, beside search + answer in blocks. On 2 cores whose speed drifts by a third
within minutes, the difference of the two on the same question (its median) shows a change of
0.2 ms that medians taken minutes apart do not.
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import http.client
import json
import os
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
from common import (
    clustered_vectors,
    folder_mb,
    passages,
    peak_rss_mb,
    percentiles,
    read_through,
    squad_questions,
    table,
    time_blocks,
    time_calls,
    time_interleaved,
)
from embed import MODELS
from models import build_model

from threatqa.index import DenseConfig, build_index

PER_FILE = 100


class SyntheticEmbedder:
    """Stands in for the model at build time only: real-structured vectors; everything else (name,
    fingerprint, tokenizer) is the real model's, so the index is served with it."""

    def __init__(self, real: object) -> None:
        self.real, self.calls = real, 0

    def __getattr__(self, name: str) -> object:
        return getattr(self.real, name)

    def encode_documents(self, texts: list[str], batch_size: int = 32) -> np.ndarray:
        self.calls += 1
        return clustered_vectors(len(texts), self.real.dimension, seed=self.calls)  # type: ignore[attr-defined]


def build(n: int, folder: Path, real_vectors: int) -> dict[str, object]:
    from threatqa.embeddings import load_embedder

    model = build_model("all-MiniLM-L6-v2", MODELS)
    docs = folder / "docs"
    docs.mkdir(parents=True)
    texts = passages(n, seed=3)
    for i in range(0, n, PER_FILE):
        (docs / f"report-{i // PER_FILE:06d}.txt").write_text("\n\n".join(texts[i : i + PER_FILE]), encoding="utf-8")
    real = n <= real_vectors
    embedder = load_embedder(str(model), backend="onnx")
    embedder = embedder if real else SyntheticEmbedder(embedder)
    t = time.perf_counter()
    report = build_index(docs, folder / "index", embedder, warn=lambda m: None, dense=DenseConfig())  # type: ignore[arg-type]
    return {"build_s": time.perf_counter() - t, "passages": report.passages, "vectors": "real" if real else "synthetic",
            "build_rss_mb": peak_rss_mb(), "model": str(model)}  # fmt: skip


def corpus(n: int, folder: Path, real_vectors: int) -> dict[str, object]:
    """`build(n, folder, ...)`'s figures, or those of the corpus built there before (a kept folder: then
    only what is measured on it runs again)."""
    if (folder / "built.json").exists():
        return json.loads((folder / "built.json").read_text())  # type: ignore[no-any-return]
    built = build(n, folder, real_vectors)
    (folder / "built.json").write_text(json.dumps(built))
    return built


def free_port() -> int:
    """A loopback port no one listens on now."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


KEEP_ALIVE_S = 3600


@contextlib.contextmanager
def http_server(app: object) -> Iterator[http.client.HTTPConnection]:
    """`app` served by uvicorn on a free loopback port in a background thread, and a kept-alive
    connection to it."""
    import uvicorn

    port = free_port()
    # connections kept open while idle between the timed phases (uvicorn closes them after 5 s by default)
    config = uvicorn.Config(app, host="127.0.0.1", port=port, log_level="critical", timeout_keep_alive=KEEP_ALIVE_S)  # type: ignore[arg-type]
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    while not server.started:
        time.sleep(0.01)
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    try:
        yield connection
    finally:
        connection.close()
        server.should_exit = True
        thread.join(10)


@contextlib.contextmanager
def server_process(
    folder: Path, model: str, src: Path | None = None, audit: str = "audit-server.sqlite3"
) -> Iterator[http.client.HTTPConnection]:
    """The app over `folder` served by uvicorn in a process of its own (this script with --http; the
    threatqa package from `src` when given), and a kept-alive connection to it once it answers."""
    port = free_port()
    env = dict(os.environ, PYTHONPATH=str(src)) if src else None
    command = [sys.executable, __file__, "--http", str(folder), "--model", model, "--port", str(port), "--audit", audit]
    child = subprocess.Popen(command, env=env)
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    try:
        for _ in range(1200):
            try:
                call(connection, "GET", "/api/health")
                break
            except OSError:
                if child.poll() is not None:
                    raise RuntimeError(f"the server process ended ({child.returncode})") from None
                connection.close()
                time.sleep(0.1)
        yield connection
    finally:
        connection.close()
        child.terminate()
        child.wait(30)


def call(connection: http.client.HTTPConnection, method: str, path: str, body: dict | None = None) -> bytes:
    """One request on the kept connection; the whole response body, read (as a client would)."""
    payload = json.dumps(body).encode() if body is not None else None
    connection.request(method, path, body=payload, headers={"Content-Type": "application/json"})
    response = connection.getresponse()
    data = response.read()
    if response.status != 200:
        raise RuntimeError(f"{method} {path}: HTTP {response.status} {data[:200]!r}")
    return data


def ask(connection: http.client.HTTPConnection, question: str) -> bytes:
    """POST /api/ask of one question on the kept connection."""
    return call(connection, "POST", "/api/ask", {"question": question})


def open_engine(folder: Path, model: str, audit: str) -> tuple[object, object]:
    """Settings and an engine over the corpus in `folder`, as the server opens them (no build)."""
    from threatqa.config import Settings
    from threatqa.engine import Engine

    settings = Settings.load(docs=folder / "docs", index=folder / "index", audit=folder / audit, model=model,
                             backend="onnx")  # fmt: skip
    return settings, Engine.start(settings, build="never", log=lambda m: None)


def http_serve(folder: Path, model: str, port: int, audit: str) -> None:
    """Runs in a process of its own: the app over `folder` on a loopback port until terminated."""
    import uvicorn

    from threatqa.api import create_app

    settings, engine = open_engine(folder, model, audit)
    read_through(folder / "index")
    app = create_app(settings, engine)
    uvicorn.run(app, host="127.0.0.1", port=port, log_level="critical", timeout_keep_alive=KEEP_ALIVE_S)  # type: ignore[arg-type]


def serve(folder: Path, model: str, queries: int) -> dict[str, object]:
    """Runs in a fresh process: open the index like the server, time each layer of a question."""
    from threatqa.answer import build_answer
    from threatqa.api import create_app

    t = time.perf_counter()
    settings, engine = open_engine(folder, model, "audit.sqlite3")
    start_s = time.perf_counter() - t
    retriever = engine._live.retriever
    index, embedder = retriever.index, retriever.embedder
    questions = squad_questions()[:queries]
    # a running server has its index in the page cache and its pages mapped in: read the files
    # through once, then answer other questions (nothing caches answers)
    read_s = read_through(folder / "index")
    for question in squad_questions()[queries : 2 * queries]:
        retriever.search(question, 5)
    result: dict[str, object] = {"start_s": start_s, "index": type(index.dense.faiss).__name__, "read_s": read_s}

    def answer(question: str) -> object:  # search, then the cited answer, as Engine.ask makes it (no audit)
        found = retriever.search(question, 5)
        return build_answer(found.question, found, engine._live.documents, index.version, index.manifest.model, ())

    with server_process(folder, model) as connection, http_server(create_app(settings, engine)) as in_process:
        api, api_thread = functools.partial(ask, connection), functools.partial(ask, in_process)
        for question in questions[:20]:  # the route's first calls (imports, pools) are not what is measured
            api(question)
            api_thread(question)
        for question in squad_questions()[queries : 2 * queries]:  # the server process's pages mapped in too
            api(question)
        # the goals' sides, timed in turn on each question, so they see the machine in the same state
        timed = time_interleaved({
            "bare": lambda q: index.dense.search(embedder.encode_query(q), 10),
            "answer": answer,
            "ask": lambda q: engine.ask(q, channel="api"),
            "api": api,
            "api_thread": api_thread,
        }, questions)  # fmt: skip
        # the goal's two sides alone in turn (among all five, this process's three runs of each question
        # through its own copy of the model empty the caches of the server process's: see the docstring)
        pair = time_interleaved({"answer": answer, "api": api}, questions)
        # and in blocks, each side back to back: the server process with its model and index in the caches,
        # as when it answers a stream of questions, rather than after this process has run its own copy
        blocks = time_blocks({"answer": answer, "api": api}, questions)
        result["health"] = percentiles(time_calls(lambda q: call(connection, "GET", "/api/health"), questions))
    result.update({name: percentiles(samples) for name, samples in timed.items()})
    result.update({f"{name}_pair": percentiles(samples) for name, samples in pair.items()})
    result.update({f"{name}_blocks": percentiles(samples) for name, samples in blocks.items()})
    result["embed"] = percentiles(time_calls(embedder.encode_query, questions))
    result["lexical"] = percentiles(time_calls(lambda q: index.lexical.search(q, 50), questions))
    result["search"] = percentiles(time_calls(lambda q: retriever.search(q, 5), questions))
    result["rss_mb"] = peak_rss_mb()
    result["index_mb"] = folder_mb(folder / "index")
    return result


def compare(folder: Path, model: str, queries: int, against: Path) -> dict[str, object]:
    """Runs in a fresh process: /api/ask of this tree's server and of one run from `against`, in turn
    on each question and in blocks, beside search + answer in blocks (milliseconds)."""
    from threatqa.answer import build_answer

    _, engine = open_engine(folder, model, "audit.sqlite3")
    retriever = engine._live.retriever
    questions, others = squad_questions()[:queries], squad_questions()[queries : 2 * queries]
    read_through(folder / "index")

    def answer(question: str) -> object:
        found = retriever.search(question, 5)
        return build_answer(found.question, found, engine._live.documents, retriever.index.version,
                            retriever.index.manifest.model, ())  # fmt: skip

    with (
        server_process(folder, model, audit="audit-this.sqlite3") as this,
        server_process(folder, model, against, audit="audit-against.sqlite3") as other,
    ):
        servers = {"this": this, "against": other}
        for question in others:  # both servers' first calls and pages mapped in, not measured
            answer(question)
            for connection in servers.values():
                ask(connection, question)
        turns: dict[str, list[float]] = {name: [] for name in servers}
        asks = {name: functools.partial(ask, connection) for name, connection in servers.items()}
        blocks: dict[str, list[float]] = {name: [] for name in ("this", "answer", "against")}
        for round_ in range(3):  # each round in the other order: neither server always goes first
            order = list(servers) if round_ % 2 == 0 else list(reversed(servers))
            for name, samples in time_interleaved({n: asks[n] for n in order}, questions, rounds=1).items():
                turns[name].extend(samples)
            for name, samples in time_blocks({order[0]: asks[order[0]], "answer": answer, order[1]: asks[order[1]]},
                                             questions, rounds=1).items():  # fmt: skip
                blocks[name].extend(samples)
    paired = [a - b for a, b in zip(turns["this"], turns["against"], strict=True)]
    return {"this": percentiles(turns["this"]), "against": percentiles(turns["against"]),
            "paired": percentiles(paired), **{f"{n}_blocks": percentiles(s) for n, s in blocks.items()}}  # fmt: skip


def run_against(sizes: list[int], real_vectors: int, queries: int, keep: Path | None, against: Path) -> None:
    rows = []
    for n in sizes:
        with tempfile.TemporaryDirectory() as tmp:
            folder = keep / str(n) if keep else Path(tmp)
            built = corpus(n, folder, real_vectors)
            out = subprocess.run([sys.executable, __file__, "--compare", str(folder), "--model", str(built["model"]),
                                  "--queries", str(queries), "--against", str(against)],
                                 capture_output=True, text=True, check=False)  # fmt: skip
            if out.returncode:
                print(out.stderr[-3000:], file=sys.stderr)
                continue
            s = json.loads(out.stdout.strip().splitlines()[-1])
        this, other, answer = s["this_blocks"][0], s["against_blocks"][0], s["answer_blocks"][0]
        rows.append([f"{built['passages']:,}", s["this"][0], s["against"][0], s["paired"][0], this, other, answer,
                     this / answer, other / answer])  # fmt: skip
    table(
        f"POST /api/ask p50 in ms, this tree against {against}, ONNX int8, {queries} SQuAD questions, "
        f"{os.cpu_count()} cores (paired: this less the other on the same question, in turn)",
        ["passages", "this, in turn", "against, in turn", "paired difference p50", "this, blocks", "against, blocks",
         "search+answer, blocks", "this / search+answer, blocks", "against / search+answer, blocks"],
        rows,
    )  # fmt: skip


def run(sizes: list[int], real_vectors: int, queries: int, keep: Path | None) -> None:
    rows, speed = [], []
    for n in sizes:
        with tempfile.TemporaryDirectory() as tmp:
            folder = keep / str(n) if keep else Path(tmp)
            built = corpus(n, folder, real_vectors)
            out = subprocess.run([sys.executable, __file__, "--serve", str(folder), "--model", str(built["model"]),
                                  "--queries", str(queries)], capture_output=True, text=True, check=False)  # fmt: skip
            if out.returncode:
                print(out.stderr[-3000:], file=sys.stderr)
                continue
            s = json.loads(out.stdout.strip().splitlines()[-1])
        ratio = s["answer"][0] / s["bare"][0]
        rows.append([f"{built['passages']:,}", built["vectors"], s["index"], s["bare"][0], s["embed"][0],
                     s["lexical"][0], s["search"][0], s["answer"][0], s["answer"][1], ratio, s["ask"][0], s["ask"][1],
                     s["api"][0], s["api"][1], s["api"][0] / s["answer"][0], s["api_thread"][0],
                     s["api_thread"][0] / s["answer"][0], s["answer_pair"][0], s["api_pair"][0],
                     s["api_pair"][0] / s["answer_pair"][0], s["answer_blocks"][0], s["api_blocks"][0],
                     s["api_blocks"][0] / s["answer_blocks"][0], s["health"][0]])  # fmt: skip
        speed.append([f"{built['passages']:,}", built["build_s"], built["passages"] / built["build_s"],
                      built["build_rss_mb"], s["start_s"], s["rss_mb"], s["index_mb"]])  # fmt: skip
    table(
        f"Query latency in ms, ONNX int8 all-MiniLM-L6 architecture, {queries} SQuAD questions, {os.cpu_count()} cores "
        "(bare = one query embedding + one FAISS search, the baseline)",
        ["passages", "vectors", "dense index", "bare p50", "embed p50", "lexical p50", "search p50",
         "search+answer p50", "search+answer p95", "search+answer / bare (goal <= 1.3)", "ask p50", "ask p95",
         "/api/ask p50", "/api/ask p95", "/api/ask / search+answer, all five in turn", "/api/ask in-process p50",
         "in-process / search+answer", "search+answer p50, the two alone in turn", "/api/ask p50, the two alone",
         "/api/ask / search+answer, the two alone in turn (goal <= 1.5)", "search+answer p50, blocks",
         "/api/ask p50, blocks", "/api/ask / search+answer, blocks (goal <= 1.5)", "empty GET p50"],
        rows,
    )  # fmt: skip
    table(
        "Build and memory (synthetic vectors: the build time excludes embedding)",
        ["passages", "build s", "build passages/s", "build peak RSS MB", "engine start s", "serving peak RSS MB",
         "index on disk MB"],
        speed,
    )  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[1000, 100_000])
    parser.add_argument("--real-vectors", type=int, default=2000, help="largest corpus embedded with the real model")
    parser.add_argument("--queries", type=int, default=200)
    parser.add_argument("--keep", type=Path, help="build each size under this folder and keep it (reused next run)")
    parser.add_argument("--against", type=Path, help="time /api/ask only, against a server run from this src folder")
    parser.add_argument("--serve", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--compare", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--audit", default="audit-server.sqlite3", help=argparse.SUPPRESS)
    parser.add_argument("--model", help=argparse.SUPPRESS)
    parser.add_argument("--http", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--port", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.http:
        http_serve(args.http, args.model, args.port, args.audit)
    elif args.serve:
        print(json.dumps(serve(args.serve, args.model, args.queries)))
    elif args.compare:
        print(json.dumps(compare(args.compare, args.model, args.queries, args.against)))
    elif args.against:
        run_against(args.sizes, args.real_vectors, args.queries, args.keep, args.against.resolve())
    else:
        run(args.sizes, args.real_vectors, args.queries, args.keep)


if __name__ == "__main__":
    main()
