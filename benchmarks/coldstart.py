"""Cold start: `python app.py` with a built index of the shipped corpus, until the first answer, offline.

    python benchmarks/coldstart.py

The index is built first (not timed) with the all-MiniLM-L6 architecture (random weights); then
app.py is started with HF_HUB_OFFLINE=1 on 127.0.0.1 and POST /api/ask is retried until it answers.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

from common import ROOT, table
from embed import MODELS
from models import build_model

from threatqa.config import Settings
from threatqa.engine import Engine

GOAL_S = 10.0


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def first_answer_s(env: dict[str, str], port: int, limit_s: float = 120.0) -> float:
    t = time.perf_counter()
    server = subprocess.Popen([sys.executable, str(ROOT / "app.py")], env=env, cwd=ROOT,
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)  # fmt: skip
    body = json.dumps({"question": "What does the NCA say about ransomware?"}).encode()
    try:
        while time.perf_counter() - t < limit_s:
            try:
                request = urllib.request.Request(f"http://127.0.0.1:{port}/api/ask", body,
                                                 {"Content-Type": "application/json"})  # fmt: skip
                with urllib.request.urlopen(request, timeout=5) as response:
                    if response.status == 200:
                        return time.perf_counter() - t
            except OSError:
                time.sleep(0.05)
        return float("nan")
    finally:
        server.terminate()
        server.wait(10)


def main() -> None:
    model = build_model("all-MiniLM-L6-v2", MODELS)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for backend in ("onnx", "torch", "lexical"):
            env = os.environ | {
                "HF_HUB_OFFLINE": "1",
                "THREATQA_DOCS": str(ROOT / "docs"),
                "THREATQA_INDEX": f"{tmp}/index-{backend}",
                "THREATQA_AUDIT": f"{tmp}/audit-{backend}.sqlite3",
                "THREATQA_MODEL": "" if backend == "lexical" else str(model),
                "THREATQA_BACKEND": "torch" if backend == "lexical" else backend,
                "THREATQA_PORT": str(free_port()),
            }
            settings = Settings.load(docs=ROOT / "docs", index=Path(env["THREATQA_INDEX"]),
                                     audit=Path(env["THREATQA_AUDIT"]), model=env["THREATQA_MODEL"],
                                     backend=env["THREATQA_BACKEND"])  # fmt: skip
            Engine.start(settings, build="missing", log=lambda m: None)  # the built index (and ONNX export) exist
            seconds = first_answer_s(env, int(env["THREATQA_PORT"]))
            rows.append([backend, seconds, "yes" if seconds <= GOAL_S else "no"])
    table("Cold start of `python app.py` to the first /api/ask answer (shipped corpus, offline)",
          ["mode", "seconds", f"<= {GOAL_S:.0f} s"], rows)  # fmt: skip


if __name__ == "__main__":
    main()
