"""Load benchmark: concurrent clients against a real `threatqa serve` on loopback, bounded in time.

    python benchmarks/load.py [--clients 32] [--seconds 120]

Phase 1 (sustained): `--clients` threads for `--seconds`, half posting to /api/ask and half
calling the Gradio endpoint (`/gradio_api/call/ask`, the one gradio_client uses), over the
shipped corpus in lexical mode. Reports requests, status codes, p50/p95/max latency per
endpoint, and the server's RSS after warm-up and at the end (growth must stay under 10%).
Phase 2 (overflow): a server with a queue of 2 gets the same number of clients for a short
time; every request beyond capacity must be answered "busy" (HTTP 503) within 1 s, not hang.
Baseline from the same run: one client asking one question at a time.
Only 127.0.0.1 is contacted. Exit status 1 when a goal is missed.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
QUESTIONS = [
    "How much money does serious organised crime generate in the UK each year?",
    "What does wastewater analysis show about cocaine?",
    "How is ChatGPT being used by scammers?",
    "Which state has tolerated cybercriminal groups on its territory?",
    "How many people are estimated to make sexual threats to children?",
    "What are criminals' boats like now?",
    "banana bread recipe",
]


@dataclass
class Tally:
    latencies: dict[str, list[float]] = field(default_factory=dict)
    statuses: dict[str, dict[int, int]] = field(default_factory=dict)
    busy_latencies: list[float] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def add(self, kind: str, status: int, seconds: float) -> None:
        with self.lock:
            self.latencies.setdefault(kind, []).append(seconds)
            counts = self.statuses.setdefault(kind, {})
            counts[status] = counts.get(status, 0) + 1
            if status == 503:
                self.busy_latencies.append(seconds)


def _post(url: str, body: dict, timeout: float = 60) -> tuple[int, bytes]:
    request = urllib.request.Request(
        url, data=json.dumps(body).encode(), headers={"Content-Type": "application/json"}, method="POST"
    )
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            return response.status, response.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read()


def ask_api(base: str, question: str) -> int:
    status, _ = _post(f"{base}/api/ask", {"question": question, "k": 5})
    return status


def ask_gradio(base: str, question: str) -> int:
    """The Gradio REST protocol: POST starts an event, GET streams its result (server-sent events)."""
    status, body = _post(f"{base}/gradio_api/call/ask", {"data": [question, 5, []]})
    if status != 200:
        return status
    event = json.loads(body)["event_id"]
    with urllib.request.urlopen(f"{base}/gradio_api/call/ask/{event}", timeout=60) as response:
        stream = response.read().decode()
    if "event: complete" in stream:
        return 200
    text = stream.lower()
    if "busy" in text or ("queue" in text and "full" in text):
        return 503  # Gradio's own "queue is full", or the shared gate's busy message
    print(f"unexpected gradio stream: {stream[:300]!r}", file=sys.stderr)
    return 500


def _client(base: str, kind: str, deadline: float, tally: Tally, offset: int) -> None:
    call = ask_api if kind == "api" else ask_gradio
    i = offset
    while time.monotonic() < deadline:
        started = time.monotonic()
        try:
            status = call(base, QUESTIONS[i % len(QUESTIONS)])
        except (OSError, ValueError):
            status = 599  # connection failure or hang: counted as a server error
        tally.add(kind, status, time.monotonic() - started)
        i += 1


def run_clients(base: str, clients: int, seconds: float) -> Tally:
    tally = Tally()
    deadline = time.monotonic() + seconds
    threads = [
        threading.Thread(target=_client, args=(base, "api" if n % 2 == 0 else "gradio", deadline, tally, n))
        for n in range(clients)
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return tally


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


class Server:
    """`threatqa serve` on a free loopback port over a copy of the shipped corpus."""

    def __init__(self, root: Path, **env: str) -> None:
        with socket.socket() as sock:
            sock.bind(("127.0.0.1", 0))
            self.port = sock.getsockname()[1]
        docs = root / "docs"
        if not docs.exists():
            shutil.copytree(ROOT / "docs", docs)
        environment = os.environ | {
            "THREATQA_MODEL": "", "THREATQA_DOCS": str(docs), "THREATQA_INDEX": str(root / "index"),
            "THREATQA_AUDIT": str(root / "audit.sqlite3"), "THREATQA_HOST": "127.0.0.1",
            "THREATQA_PORT": str(self.port), "HF_HUB_OFFLINE": "1", **env,
        }  # fmt: skip
        self.log = (root / f"server-{self.port}.log").open("w")
        self.process = subprocess.Popen(
            [sys.executable, "-m", "threatqa.cli", "serve"], env=environment, stdout=self.log, stderr=subprocess.STDOUT
        )
        self.base = f"http://127.0.0.1:{self.port}"
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            try:
                urllib.request.urlopen(self.base + "/api/health", timeout=1).close()
                return
            except OSError:
                time.sleep(0.2)
        raise SystemExit("server did not start")

    def stop(self) -> None:
        self.process.terminate()
        self.process.wait(10)
        self.log.close()


def _pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))] * 1000 if ordered else float("nan")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clients", type=int, default=32)
    parser.add_argument("--seconds", type=float, default=120)
    parser.add_argument("--warmup", type=float, default=45)
    args = parser.parse_args()
    ok = True
    with tempfile.TemporaryDirectory(prefix="threatqa-load-") as tmp:
        server = Server(Path(tmp) / "a")
        try:
            baseline = run_clients(server.base, 2, 5)  # one api + one gradio client, sequential requests
            # warm-up: fills the server's bounded caches (Gradio keeps up to 2,000 sessions' message
            # queues, `ui_sessions` sessions' state, 200 event timings) so growth after it means a leak
            run_clients(server.base, args.clients, args.warmup)
            before = rss_mb(server.process.pid)
            tally = run_clients(server.base, args.clients, args.seconds)
            after = rss_mb(server.process.pid)
        finally:
            server.stop()
        print(f"sustained: {args.clients} clients for {args.seconds:.0f} s on 127.0.0.1 (lexical mode, shipped corpus)")
        print(
            f"{'endpoint':10} {'requests':>9} {'statuses':24} {'p50 ms':>8} {'p95 ms':>8} {'max ms':>8} {'base p50':>9}"
        )
        for kind in ("api", "gradio"):
            lat = tally.latencies.get(kind, [])
            base = baseline.latencies.get(kind, [])
            statuses = json.dumps(tally.statuses.get(kind, {}))
            slowest = max(lat) * 1000 if lat else 0
            base_p50 = statistics.median(base) * 1000 if base else 0
            print(f"{kind:10} {len(lat):9d} {statuses:24} {_pct(lat, 0.5):8.1f} {_pct(lat, 0.95):8.1f} "
                  f"{slowest:8.1f} {base_p50:9.1f}")  # fmt: skip
        errors = sum(n for counts in tally.statuses.values() for s, n in counts.items() if s >= 500 and s != 503)
        busy = sum(counts.get(503, 0) for counts in tally.statuses.values())
        growth = (after - before) / before * 100
        print(f"server errors (5xx other than busy): {errors}; busy answers: {busy}")
        print(
            f"server RSS after warm-up {before:.0f} MB, at the end {after:.0f} MB: growth {growth:+.1f}% (goal < 10%)"
        )
        ok &= errors == 0 and growth < 10

        server = Server(Path(tmp) / "b", THREATQA_QUEUE_SIZE="2", THREATQA_WORKERS="1")
        try:
            overflow = run_clients(server.base, args.clients, min(20.0, args.seconds))
        finally:
            server.stop()
        slowest = max(overflow.busy_latencies, default=float("nan"))
        statuses = {kind: counts for kind, counts in overflow.statuses.items()}
        print(f"overflow: {args.clients} clients, 1 worker, queue of 2: statuses {json.dumps(statuses)}")
        print(f"busy (503) answers: {len(overflow.busy_latencies)}, slowest {slowest * 1000:.0f} ms (goal < 1000 ms)")
        other_errors = sum(n for c in overflow.statuses.values() for s, n in c.items() if s >= 500 and s != 503)
        ok &= bool(overflow.busy_latencies) and slowest < 1.0 and other_errors == 0
    print("all goals met" if ok else "GOAL MISSED")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
