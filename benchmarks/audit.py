"""Audit log: append latency and bytes per answer, the log before this change against the log now.

Both are fed the same answers (real `Engine.ask` payloads from a lexical index over SQuAD
passages, k=5 and k=100), in the same run:

- before: a new connection per record, rollback journal, synchronous=FULL, every passage's text
  (twice) in every record (threatqa's audit.py at 833f93d, its append path kept below);
- now: `AuditLog`, one kept connection in WAL mode, synchronous=FULL, lean records (each distinct
  text stored once, named by number in the record) with an HMAC per record.

"bytes per answer" is what the log's files grew by, divided by the answers; "of which new texts" the
part of it in the pages of the texts table and its index.

    python benchmarks/audit.py [--answers 400] [--passages 2000] [--threads 4]
"""

from __future__ import annotations

import argparse
import sqlite3
import statistics
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

from common import file_bytes, passages, squad_questions

from old_audit import OLD_SCHEMA, old_record  # tests/old_audit.py: the writer before this change
from threatqa.audit import AuditLog
from threatqa.config import Settings
from threatqa.engine import Engine


class OldLog:
    """The append path before this change: a connection per record, rollback journal, whole payloads."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def append(self, kind: str, question: str, payload: dict[str, Any], user: str | None = None,
               channel: str = "cli", record_id: str | None = None) -> None:  # fmt: skip
        conn = sqlite3.connect(self.path, timeout=30, isolation_level=None)
        try:
            conn.execute("PRAGMA synchronous=FULL")
            conn.executescript(OLD_SCHEMA)
            conn.execute("BEGIN IMMEDIATE")
            old_record(conn, kind, question, payload, user, channel, record_id)
            conn.execute("COMMIT")
        finally:
            conn.close()

    def close(self) -> None:
        pass


Record = tuple[str, dict[str, Any], str]  # question, payload, record id


def answers(folder: Path, n_passages: int, n_answers: int, k: int) -> list[Record]:
    """Real logged answers: the payloads `Engine.ask` writes, read back from a scratch log."""
    docs = folder / "docs"
    if not docs.exists():
        docs.mkdir()
        texts = passages(n_passages)
        for d in range(0, len(texts), 50):
            (docs / f"report-{d // 50:03d}.txt").write_text("\n\n".join(texts[d : d + 50]) + "\n", encoding="utf-8")
    settings = Settings.load(docs=docs, index=folder / "index", audit=folder / f"scratch-{k}.sqlite3", model="")
    engine = Engine.start(settings, build="missing", log=lambda m: None)
    for question in squad_questions()[:n_answers]:
        engine.ask(question, k=k, channel="api")
    return [(r.question, r.payload, r.id) for r in AuditLog(settings.audit).records()]


def run(makers: dict[str, Callable[[Path], Any]], folder: Path, records: list[Record], tag: str = "") -> dict:
    """Each record appended to every log in turn (so a busy moment slows them alike); p50, p95, and the
    bytes the log grew by per answer (of which the texts table)."""
    logs = {name: make(folder / f"{name}.sqlite3") for name, make in makers.items()}
    before = {name: file_bytes(folder / f"{name}.sqlite3") if (folder / f"{name}.sqlite3").exists() else (0, 0)
              for name in logs}  # fmt: skip
    times: dict[str, list[float]] = {name: [] for name in logs}
    for question, payload, rid in records:
        for name, log in logs.items():
            start = time.perf_counter()
            log.append("answer", question, payload, user="analyst7", channel="api", record_id=rid + tag)
            times[name].append(time.perf_counter() - start)
    figures = {}
    for name, log in logs.items():
        log.close()  # the last connection to close checkpoints the WAL into the file
        spent = sorted(times[name])
        total, texts = file_bytes(folder / f"{name}.sqlite3")
        total, texts = total - before[name][0], texts - before[name][1]
        figures[name] = {"p50": statistics.median(spent) * 1000, "p95": spent[int(len(spent) * 0.95)] * 1000,
                         "bytes": total / len(records), "texts": texts / len(records)}  # fmt: skip
    return figures


def run_threads(make: Callable[[Path], Any], path: Path, records: list[Record], threads: int) -> float:
    """Answers per second with `threads` writers sharing one log object (a server's workers)."""
    log = make(path)
    chunks = [records[i::threads] for i in range(threads)]

    def write(chunk: list[Record], n: int) -> None:
        for question, payload, rid in chunk:
            log.append("answer", question, payload, channel="api", record_id=f"{rid}-{n}")

    workers = [threading.Thread(target=write, args=(chunk, n)) for n, chunk in enumerate(chunks)]
    start = time.perf_counter()
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join()
    seconds = time.perf_counter() - start
    log.close()
    return len(records) / seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--answers", type=int, default=400, help="answers logged at k=5 (k=100: a quarter)")
    parser.add_argument("--passages", type=int, default=2000)
    parser.add_argument("--threads", type=int, default=4)
    args = parser.parse_args()
    makers = {"before (833f93d)": OldLog, "now": AuditLog}
    print("| log | k | answers | append p50 | append p95 | bytes per answer (of which new texts) | "
          f"answers/s, {args.threads} threads |\n|---|---|---|---|---|---|---|")  # fmt: skip
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        for k, n in ((5, args.answers), (100, max(20, args.answers // 4))):
            records = answers(folder, args.passages, n, k)
            run_folder = folder / f"k{k}"
            run_folder.mkdir()
            figures = run(makers, run_folder, records)
            for name, make in makers.items():
                rate = run_threads(make, run_folder / f"{name}-threads.sqlite3", records, args.threads)
                f = figures[name]
                print(f"| {name} | {k} | {len(records)} | {f['p50']:.2f} ms | {f['p95']:.2f} ms | "
                      f"{f['bytes']:,.0f} ({f['texts']:,.0f}) | {rate:,.0f} |", flush=True)  # fmt: skip
            f = run({"now": AuditLog}, run_folder, records, tag="-again")["now"]
            print(f"| now, the same answers again (texts already stored) | {k} | {len(records)} | {f['p50']:.2f} ms | "
                  f"{f['p95']:.2f} ms | {f['bytes']:,.0f} ({f['texts']:,.0f}) | |", flush=True)  # fmt: skip


if __name__ == "__main__":
    main()
