"""Hostile inputs against a real `threatqa serve` and `threatqa index`, with the figures issue 13 asks for.

    python benchmarks/hostile.py

Against a server on loopback (lexical mode, the shipped corpus), each payload is sent and its
status checked; the server's peak RSS (VmHWM) is read before and after the large bodies:
    - a 100 MB /api/ask body with Content-Length, and the same streamed without it
    - 1M `documents` entries (14 MB of JSON), six of them in parallel
    - a 4 KB /api/verify body naming the same document 200 times, and one over the citation cap
Then `threatqa index` (a separate process) over a docs folder holding a 49.5 MB single-line
lower-case .txt (no sentence punctuation), 100k nested <div>s (1.1 MB) and a link to /etc/passwd:
peak RSS, time, largest passage. The baseline from the same run: the server's peak RSS after
100 ordinary questions, and `threatqa index` of the shipped corpus alone.
Exit status 1 when a payload gets an unexpected status (a failure).
"""

from __future__ import annotations

import http.client
import json
import os
import resource
import sqlite3
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from load import ROOT, Server

MB = 1024 * 1024


def peak_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def request(port: int, path: str, body: bytes | None = None, chunked: bool = False) -> int:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=120)
    try:
        headers = {"Content-Type": "application/json"}
        if chunked:
            conn.putrequest("POST", path)
            conn.putheader("Content-Type", "application/json")
            conn.putheader("Transfer-Encoding", "chunked")
            conn.endheaders()
            piece = b"x" * MB
            try:
                for _ in range(100):
                    conn.send(b"%x\r\n%s\r\n" % (len(piece), piece))
                conn.send(b"0\r\n\r\n")
            except OSError:  # the server answered 413 and closed while we were still sending
                pass
        else:
            conn.request("POST" if body is not None else "GET", path, body=body, headers=headers)
        return conn.getresponse().status
    except (ConnectionError, http.client.RemoteDisconnected):
        return 413  # refused mid-upload: the connection was closed after the 413
    finally:
        conn.close()


def server_figures(root: Path) -> tuple[list[tuple[str, int, int, float]], float]:
    """(payload, expected, got, seconds) for each payload, and the baseline peak RSS."""
    server = Server(root)
    port = server.port
    rows: list[tuple[str, int, int, float]] = []

    def send(name: str, expected: int, *args: object, **kwargs: object) -> None:
        began = time.perf_counter()
        got = request(port, *args, **kwargs)  # type: ignore[arg-type]
        rows.append((name, expected, got, time.perf_counter() - began))

    question = json.dumps({"question": "How much money is laundered through the UK?"}).encode()
    for _ in range(100):
        request(port, "/api/ask", question)
    baseline = peak_mb(server.process.pid)
    send("100 MB body, Content-Length", 413, "/api/ask", b'{"question": "' + b"x" * (100 * MB) + b'"}')
    send("100 MB body, streamed", 413, "/api/ask", chunked=True)
    million = json.dumps({"question": "cocaine", "documents": [f"d{i}" for i in range(1_000_000)]}).encode()
    began = time.perf_counter()
    with ThreadPoolExecutor(6) as pool:
        statuses = list(pool.map(lambda _: request(port, "/api/ask", million), range(6)))
    rows += [(f"1M documents entries ({len(million) // MB} MB), 6 at once", 413, s, time.perf_counter() - began)
             for s in statuses]  # fmt: skip
    answer = json.loads(_get_answer(port))
    one = {"question": "q", "passages": answer["passages"][:1] * 200}
    send(
        f"/api/verify, 200 citations ({len(json.dumps(one)) // 1024} KB)", 200, "/api/verify", json.dumps(one).encode()
    )
    over = {"question": "q", "passages": answer["passages"][:1] * 201}
    send("/api/verify, 201 citations", 422, "/api/verify", json.dumps(over).encode())
    for path in ("/gradio_api/file=http://127.0.0.2:9/x.png", "/gradio_api/upload", "/gradio_api/run-history/buckets"):
        send(path, 404, path)
    send("/api/health after all of it", 200, "/api/health")
    rows.append(("server peak RSS after the payloads (MB)", 0, 0, peak_mb(server.process.pid)))
    server.stop()
    return rows, baseline


def _get_answer(port: int) -> bytes:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
    conn.request("POST", "/api/ask", body=json.dumps({"question": "How much money is laundered?"}).encode(),
                 headers={"Content-Type": "application/json"})  # fmt: skip
    data = conn.getresponse().read()
    conn.close()
    return data


def index_figures(root: Path, hostile: bool) -> tuple[float, float, int, str]:
    """Seconds, peak RSS (MB) and largest passage (characters) of `threatqa index` in a child process."""
    docs = root / ("hostile-docs" if hostile else "plain-docs")
    docs.mkdir()
    (docs / "speech.txt").write_text((ROOT / "docs").glob("*.txt").__next__().read_text(encoding="utf-8"))
    if hostile:
        words = [
            "lorem",
            "ipsum",
            "dolor",
            "sit",
            "amet",
            "consectetur",
            "adipiscing",
            "elit",
            "sed",
            "do",
            "eiusmod",
            "tempor",
        ]
        line = " ".join(words[i % len(words)] for i in range(int(49.5 * MB) // 6))
        (docs / "one-line.txt").write_text(line[: int(49.5 * MB)], encoding="utf-8")
        (docs / "nested.html").write_text("<html><body>" + "<div>" * 100_000 + "deep" + "</div>" * 100_000)
        (docs / "passwd.txt").symlink_to("/etc/passwd")
    index = root / f"index-{docs.name}"
    env = os.environ | {"THREATQA_MODEL": "", "THREATQA_DOCS": str(docs), "THREATQA_INDEX": str(index),
                        "THREATQA_AUDIT": str(root / "audit.sqlite3")}  # fmt: skip
    began = time.perf_counter()
    done = subprocess.run([sys.executable, "-m", "threatqa.cli", "index"], env=env, capture_output=True, text=True)
    seconds = time.perf_counter() - began
    peak = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024  # the largest child so far
    version = (index / "CURRENT").read_text().strip()
    conn = sqlite3.connect(f"file:{index / version / 'chunks.sqlite'}?mode=ro", uri=True)
    longest = conn.execute('SELECT MAX("end" - start) FROM chunks').fetchone()[0]  # passages are offsets (schema 7)
    conn.close()
    return seconds, peak, longest, done.stderr + done.stdout


def main() -> int:
    with tempfile.TemporaryDirectory() as folder:
        root = Path(folder)
        rows, baseline = server_figures(root)
        print(f"{'payload':58} {'expected':>8} {'got':>5} {'seconds':>8}")
        failures = 0
        for name, expected, got, seconds in rows:
            if expected == 0:
                print(f"{name:58} {'':>8} {'':>5} {seconds:8.0f}  (baseline after 100 questions: {baseline:.0f} MB)")
                continue
            failures += got != expected
            print(f"{name:58} {expected:>8} {got:>5} {seconds:8.2f}" + ("  FAILURE" if got != expected else ""))
        plain = index_figures(root, hostile=False)
        hostile = index_figures(root, hostile=True)
        print(f"\n{'threatqa index':58} {'seconds':>8} {'peak RSS MB':>12} {'longest passage':>16}")
        print(f"{'shipped corpus (baseline)':58} {plain[0]:8.1f} {plain[1]:12.0f} {plain[2]:16,}")
        print(f"{'+ 49.5 MB one-line txt, 100k nested divs, link to /etc/passwd':58} {hostile[0]:8.1f} "
              f"{hostile[1]:12.0f} {hostile[2]:16,}")  # fmt: skip
        warnings = [line for line in hostile[3].splitlines() if "skipped" in line or "refused" in line]
        print("warnings:", *warnings, sep="\n  ")
        print(f"\n{len(rows) - 1} payloads, {failures} failures")
        return 1 if failures else 0


if __name__ == "__main__":
    raise SystemExit(main())
