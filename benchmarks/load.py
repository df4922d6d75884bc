"""Load benchmark: concurrent clients against a real `threatqa serve` on loopback, with index rebuilds.

    python benchmarks/load.py [--modes hybrid] [--clients 32] [--seconds 120] [--rebuilds 6]

Per mode (hybrid: the bundled all-MiniLM-L6-v2; lexical: THREATQA_MODEL= empty), one server over
a copy of the shipped corpus, default workers and queue:
- baseline: one /api/ask and one Gradio client, one question at a time, 5 s;
- warm-up: `--clients` clients for `--warmup` s (fills the server's bounded caches);
- sustained: `--clients` clients for `--seconds` s, half posting to /api/ask and half calling the
  Gradio endpoint (`/gradio_api/call/ask`, the one gradio_client uses), while `--rebuilds` times a
  document in the server's docs folder is changed, `threatqa index` runs as a separate process on
  the same THREATQA_DOCS/THREATQA_INDEX, and the server is polled (/api/health index_version) until
  it answers from the new version; then its RSS (VmRSS), open files and deleted index files still
  held open or mapped are sampled (/proc/<pid>/status, fd, maps), and once before the first rebuild;
- burst: twice the clients (`--burst-clients`) for `--burst-seconds` s: beyond capacity the answer
  must be "busy" (503), nothing else;
- audit: every 200 answer's id must be an answer record in the audit log (read-only SQLite).
Then, once (lexical mode), overflow: a server with 1 worker and a queue of 2 gets `--clients`
clients for 20 s; every request beyond capacity must be answered "busy" within 1 s, not hang.
Only 127.0.0.1 is contacted. Exit status 1 when a goal is missed: 5xx other than busy, RSS growth
across the rebuilds >= 10% of the RSS before them, open files (not sockets) after a rebuild more
than `FD_SLACK` above the count before them, a deleted index file held open, a rebuild not picked up,
an answer without its audit record, busy answers slower than 1 s in the overflow phase.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import socket
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
from collections import Counter
from collections.abc import Callable
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
FD_SLACK = 4  # open files may vary by this many (sockets of clients being served)
SETTLE = 2.0  # seconds after the server answers from a new version before it is sampled


@dataclass
class Tally:
    latencies: dict[str, list[float]] = field(default_factory=dict)
    statuses: dict[str, dict[int, int]] = field(default_factory=dict)
    busy_latencies: list[float] = field(default_factory=list)
    answered: set[str] = field(default_factory=set)  # ids of the 200 answers
    unavailable: Counter = field(default_factory=Counter)  # the message of every 503
    lock: threading.Lock = field(default_factory=threading.Lock)

    def add(self, kind: str, status: int, seconds: float, answer_id: str | None = None, message: str = "") -> None:
        with self.lock:
            self.latencies.setdefault(kind, []).append(seconds)
            counts = self.statuses.setdefault(kind, {})
            counts[status] = counts.get(status, 0) + 1
            if status == 503:
                self.busy_latencies.append(seconds)
                self.unavailable[message[:100]] += 1
            if answer_id:
                self.answered.add(answer_id)

    def errors(self) -> int:
        """Server errors other than 503 (599: a connection failure or a hang)."""
        return sum(n for counts in self.statuses.values() for s, n in counts.items() if s >= 500 and s != 503)

    def not_busy(self) -> int:
        """503 answers whose message is not the "busy, try again" one."""
        return sum(n for message, n in self.unavailable.items() if not _is_busy(message))


def _is_busy(message: str) -> bool:
    text = message.lower()
    return "busy" in text or ("queue" in text and "full" in text)  # ours, or Gradio's own queue


Result = tuple[int, str | None, str]  # status, answer id, message


def _post(url: str, body: dict, timeout: float = 60) -> tuple[int, bytes]:
    request = urllib.request.Request(
        url, data=json.dumps(body).encode(), headers={"Content-Type": "application/json"}, method="POST"
    )
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            return response.status, response.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read()


def ask_api(base: str, question: str) -> Result:
    status, body = _post(f"{base}/api/ask", {"question": question, "k": 5})
    if status == 200:
        return status, json.loads(body)["id"], ""
    try:
        return status, None, str(json.loads(body).get("detail", ""))
    except ValueError:
        return status, None, body[:100].decode(errors="replace")


def ask_gradio(base: str, question: str) -> Result:
    """The Gradio REST protocol: POST starts an event, GET streams its result (server-sent events)."""
    status, body = _post(f"{base}/gradio_api/call/ask", {"data": [question, 5, []]})
    if status != 200:
        return status, None, body[:100].decode(errors="replace")
    event = json.loads(body)["event_id"]
    with urllib.request.urlopen(f"{base}/gradio_api/call/ask/{event}", timeout=60) as response:
        stream = response.read().decode()
    if "event: complete" in stream:
        data = stream.split("event: complete", 1)[1].split("data:", 1)[1].strip().splitlines()[0]
        return 200, json.loads(data)[0]["id"], ""
    if _is_busy(stream):
        return 503, None, stream.rsplit("data:", 1)[-1].strip()[:100]
    print(f"unexpected gradio stream: {stream[:300]!r}", file=sys.stderr)
    return 500, None, stream[:100]


def _client(base: str, kind: str, stop: Callable[[], bool], tally: Tally, offset: int) -> None:
    call = ask_api if kind == "api" else ask_gradio
    i = offset
    while not stop():
        started = time.monotonic()
        try:
            status, answer_id, message = call(base, QUESTIONS[i % len(QUESTIONS)])
        except (OSError, ValueError, KeyError, IndexError):
            status, answer_id, message = 599, None, ""  # connection failure, hang or garbled reply: an error
        tally.add(kind, status, time.monotonic() - started, answer_id, message)
        i += 1


def run_clients(base: str, clients: int, seconds: float, tally: Tally | None = None,
                until: threading.Event | None = None) -> Tally:  # fmt: skip
    """`clients` threads asking one question after another for `seconds` (and, given `until`, at
    least until it is set)."""
    tally = tally or Tally()
    deadline = time.monotonic() + seconds

    def stop() -> bool:
        return time.monotonic() >= deadline and (until is None or until.is_set())

    threads = [
        threading.Thread(target=_client, args=(base, "api" if n % 2 == 0 else "gradio", stop, tally, n))
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


@dataclass
class Sample:
    """The server process after a rebuild (or after warm-up, rebuild 0)."""

    rebuild: int
    rss_mb: float
    open_files: int  # regular files (and folders) open; sockets, pipes and the like are counted apart
    sockets: int  # sockets, pipes, event fds: these follow the clients being served
    index_files: int  # open files under the index folder
    deleted: int  # of those, deleted (an old version's file still held)
    mapped_deleted: int  # deleted index files still memory-mapped (/proc/<pid>/maps)
    index_s: float = 0.0  # `threatqa index` wall time
    switch_s: float = 0.0  # from the end of the build to the server answering from the new version
    version: str = ""


def sample(pid: int, index_dir: Path, rebuild: int, **timings: object) -> Sample:
    files = others = index_files = deleted = 0
    root = str(index_dir.resolve())
    for fd in Path(f"/proc/{pid}/fd").iterdir():
        try:
            target = os.readlink(fd)
        except OSError:  # closed while we looked
            continue
        if not target.startswith("/"):  # socket:[...], pipe:[...], anon_inode:...
            others += 1
            continue
        files += 1
        if target.startswith(root):
            index_files += 1
            deleted += target.endswith(" (deleted)")
    maps = Path(f"/proc/{pid}/maps").read_text().splitlines()
    mapped = {line.split(None, 5)[-1] for line in maps if root in line and line.endswith(" (deleted)")}
    return Sample(rebuild, rss_mb(pid), files, others, index_files, deleted, len(mapped), **timings)  # type: ignore[arg-type]


class Server:
    """`threatqa serve` on a free loopback port over a copy of the shipped corpus; `mode` hybrid runs
    the bundled model (the default THREATQA_MODEL), lexical sets THREATQA_MODEL= empty."""

    def __init__(self, root: Path, mode: str = "lexical", **env: str) -> None:
        with socket.socket() as sock:
            sock.bind(("127.0.0.1", 0))
            self.port = sock.getsockname()[1]
        self.docs, self.index = root / "docs", root / "index"
        self.audit = root / "audit.sqlite3"
        if not self.docs.exists():
            shutil.copytree(ROOT / "docs", self.docs)
        inherited = {k: v for k, v in os.environ.items() if not k.startswith("THREATQA_")}
        self.environment = inherited | {
            "THREATQA_DOCS": str(self.docs), "THREATQA_INDEX": str(self.index), "THREATQA_AUDIT": str(self.audit),
            "THREATQA_HOST": "127.0.0.1", "THREATQA_PORT": str(self.port), "HF_HUB_OFFLINE": "1",
            **({"THREATQA_MODEL": ""} if mode == "lexical" else {}), **env,
        }  # fmt: skip
        self.log_path = root / f"server-{self.port}.log"
        self.log = self.log_path.open("w")
        self.process = subprocess.Popen(
            [sys.executable, "-m", "threatqa.cli", "serve"], env=self.environment, stdout=self.log,
            stderr=subprocess.STDOUT,
        )  # fmt: skip
        self.base = f"http://127.0.0.1:{self.port}"
        deadline = time.monotonic() + 600  # hybrid: the model loads and the index is built first
        while time.monotonic() < deadline and self.process.poll() is None:
            try:
                urllib.request.urlopen(self.base + "/api/health", timeout=2).close()
                return
            except OSError:
                time.sleep(0.5)
        self.stop()
        raise SystemExit(f"server did not start: {self.log_path.read_text()[-2000:]}")

    def said(self) -> str:
        """The server's start-up line (mode, model, documents, passages, index version)."""
        lines = [line for line in self.log_path.read_text(errors="replace").splitlines() if "serving on" in line]
        return lines[0] if lines else "?"

    def index_version(self) -> str:
        with urllib.request.urlopen(self.base + "/api/health", timeout=10) as response:
            return json.loads(response.read())["index_version"]

    def rebuild(self, number: int) -> Sample:
        """Change a document, build with `threatqa index` in its own process, wait for the server to
        answer from the new version (clients keep asking meanwhile, which makes it switch), sample it."""
        old = self.index_version()
        document = sorted(self.docs.glob("*.txt"))[0]
        with document.open("a", encoding="utf-8") as out:
            out.write(f"\n\nRebuild {number} under load: this paragraph was added at {time.time():.3f}.\n")
        started = time.monotonic()
        build = subprocess.run(
            [sys.executable, "-m", "threatqa.cli", "index"], env=self.environment, capture_output=True, text=True
        )
        built = time.monotonic()
        if build.returncode:
            raise SystemExit(f"threatqa index failed: {build.stderr[-2000:]}")
        version = old
        while version == old and time.monotonic() - built < 120:
            time.sleep(0.1)
            version = self.index_version()
        switched = time.monotonic()
        time.sleep(SETTLE)
        return sample(self.process.pid, self.index, number, index_s=built - started,
                      switch_s=switched - built if version != old else float("inf"), version=version)  # fmt: skip

    def stop(self) -> None:
        self.process.terminate()
        self.process.wait(30)
        self.log.close()


def audit_ids(path: Path) -> set[str]:
    """Ids of the answer records in the audit log, read without writing anything."""
    connection = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    try:
        return {row[0] for row in connection.execute("SELECT id FROM records WHERE kind = 'answer'")}
    finally:
        connection.close()


def _pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))] * 1000 if ordered else float("nan")


def _rebuilding(server: Server, count: int, seconds: float, samples: list[Sample], done: threading.Event) -> None:
    """Rebuilds spread over the sustained phase, one after another; the first sample is taken under
    the same load, before the first rebuild."""
    try:
        started = time.monotonic()
        time.sleep(1)
        samples.append(sample(server.process.pid, server.index, 0, version=server.index_version()))
        for number in range(1, count + 1):
            time.sleep(max(0.0, started + (number - 1) * seconds / count + 2 - time.monotonic()))
            samples.append(server.rebuild(number))
    finally:
        done.set()


def print_phase(title: str, tally: Tally, baseline: Tally | None = None) -> None:
    print(title)
    print(f"  {'endpoint':8} {'requests':>8} {'statuses':28} {'p50 ms':>8} {'p95 ms':>8} {'max ms':>8} {'base p50':>8}")
    for kind in ("api", "gradio"):
        lat = tally.latencies.get(kind, [])
        base = baseline.latencies.get(kind, []) if baseline else []
        statuses = json.dumps(dict(sorted(tally.statuses.get(kind, {}).items())))
        slowest = max(lat) * 1000 if lat else 0
        base_p50 = f"{statistics.median(base) * 1000:8.1f}" if base else f"{'':8}"
        print(f"  {kind:8} {len(lat):8d} {statuses:28} {_pct(lat, 0.5):8.1f} {_pct(lat, 0.95):8.1f} "
              f"{slowest:8.1f} {base_p50}")  # fmt: skip
    if tally.unavailable:
        print(f"  503 messages: {json.dumps(dict(tally.unavailable))}")


def run_mode(mode: str, root: Path, args: argparse.Namespace) -> bool:
    """One server in `mode` through baseline, warm-up, sustained load with rebuilds, and a burst."""
    server = Server(root, mode)
    samples: list[Sample] = []
    try:
        baseline = run_clients(server.base, 2, 5)  # one api + one gradio client, sequential requests
        # warm-up: fills the server's bounded caches (Gradio keeps up to 2,000 sessions' message
        # queues, `ui_sessions` sessions' state, 200 event timings) so growth after it means a leak
        warm = run_clients(server.base, args.clients, args.warmup)
        done = threading.Event()
        rebuilds = threading.Thread(target=_rebuilding, args=(server, args.rebuilds, args.seconds, samples, done))
        started = time.monotonic()
        rebuilds.start()
        sustained = run_clients(server.base, args.clients, args.seconds, until=done)
        sustained_s = time.monotonic() - started
        rebuilds.join()
        burst = run_clients(server.base, args.burst_clients, args.burst_seconds)
        said = server.said()
    finally:
        server.stop()
    answered = baseline.answered | warm.answered | sustained.answered | burst.answered
    logged = audit_ids(server.audit)
    print(f"\n== {mode} mode == {said}")
    print_phase("baseline: 2 clients for 5 s, one question at a time each", baseline)
    print_phase(f"sustained: {args.clients} clients for {sustained_s:.0f} s with {args.rebuilds} rebuilds", sustained,
                baseline)  # fmt: skip
    print_phase(f"burst: {args.burst_clients} clients for {args.burst_seconds:.0f} s", burst, baseline)
    print(
        f"rebuilds under load (#0 before the first; then {SETTLE:.0f} s after the server answers from the new version):"
    )
    print(f"  {'#':>2} {'index s':>8} {'switch s':>8} {'RSS MB':>8} {'open files':>10} {'sockets etc':>11} "
          f"{'index files':>11} {'deleted held':>12} {'deleted mapped':>14}  version")  # fmt: skip
    for s in samples:
        print(f"  {s.rebuild:2d} {s.index_s:8.1f} {s.switch_s:8.1f} {s.rss_mb:8.1f} {s.open_files:10d} "
              f"{s.sockets:11d} {s.index_files:11d} {s.deleted:12d} {s.mapped_deleted:14d}  {s.version}")  # fmt: skip
    first, last = samples[0], samples[-1]
    growth = (last.rss_mb - first.rss_mb) / first.rss_mb * 100
    fd_rise = max(s.open_files for s in samples) - first.open_files
    held = max(s.deleted + s.mapped_deleted for s in samples)
    switched = len(samples) - 1 == args.rebuilds and all(s.switch_s < float("inf") for s in samples)
    missing, unseen = answered - logged, logged - answered
    tallies = (baseline, warm, sustained, burst)
    errors, not_busy = sum(t.errors() for t in tallies), sum(t.not_busy() for t in tallies)
    busy = sum(t.unavailable.total() for t in tallies) - not_busy
    goals = [
        (f"RSS across the rebuilds (under load, after warm-up): {first.rss_mb:.0f} -> {last.rss_mb:.0f} MB, "
         f"{growth:+.1f}%", "< 10%", growth < 10),
        (f"open files: {first.open_files} before the rebuilds, at most {first.open_files + fd_rise} after a rebuild",
         f"rise <= {FD_SLACK}", fd_rise <= FD_SLACK),
        (f"deleted index files held open or mapped after a rebuild: at most {held}", "0", held == 0),
        (f"rebuilds picked up by the server: {len(samples) - 1} of {args.rebuilds}", "all", switched),
        (f"200 answers: {len(answered)}; answer records in the audit log: {len(logged)}; answers without a "
         f"record: {len(missing)}", "0 without", not missing),
        (f"503 answers: {busy} busy, {not_busy} other; other 5xx and failed connections: {errors}", "0 other",
         not_busy == 0 and errors == 0),
    ]  # fmt: skip
    for text, goal, met in goals:
        print(f"  {'ok  ' if met else 'MISS'} {text} (goal {goal})")
    notes = [line for line in server.log_path.read_text(errors="replace").splitlines() if "serving on" not in line]
    for line in notes[-12:]:
        print(f"  server log: {line[:300]}")
    if unseen:
        print(f"  note: {len(unseen)} audit records whose answer no client saw (a client gave up waiting)")
    return all(met for _, _, met in goals)


def overflow(root: Path, clients: int, seconds: float) -> bool:
    server = Server(root, "lexical", THREATQA_QUEUE_SIZE="2", THREATQA_WORKERS="1")
    try:
        tally = run_clients(server.base, clients, seconds)
    finally:
        server.stop()
    slowest = max(tally.busy_latencies, default=float("nan"))
    print(f"\n== overflow == {clients} clients for {seconds:.0f} s, 1 worker, queue of 2 (lexical mode)")
    print_phase("", tally)
    print(f"  busy (503) answers: {len(tally.busy_latencies)}, slowest {slowest * 1000:.0f} ms (goal < 1000 ms)")
    return bool(tally.busy_latencies) and slowest < 1.0 and tally.errors() == 0 and tally.not_busy() == 0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--modes", default="hybrid", help="comma-separated: hybrid, lexical")
    parser.add_argument("--clients", type=int, default=32)
    parser.add_argument("--seconds", type=float, default=120)
    parser.add_argument("--warmup", type=float, default=45)
    parser.add_argument("--rebuilds", type=int, default=6)
    parser.add_argument("--burst-clients", type=int, default=None, help="default: twice --clients")
    parser.add_argument("--burst-seconds", type=float, default=60)
    parser.add_argument("--no-overflow", action="store_true", help="skip the 1-worker, queue-of-2 phase")
    args = parser.parse_args()
    args.burst_clients = args.burst_clients or 2 * args.clients
    print(f"load run on 127.0.0.1, {os.cpu_count()} cores; {' '.join(sys.argv)}")
    ok = True
    with tempfile.TemporaryDirectory(prefix="threatqa-load-") as tmp:
        for mode in [m.strip() for m in args.modes.split(",") if m.strip()]:
            ok &= run_mode(mode, Path(tmp) / mode, args)
        if not args.no_overflow:
            ok &= overflow(Path(tmp) / "overflow", args.clients, min(20.0, args.seconds))
    print("all goals met" if ok else "GOAL MISSED")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
