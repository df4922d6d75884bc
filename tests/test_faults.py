"""A build killed at random points leaves the previous index loadable (slow: real processes)."""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from threatqa.chunking import ChunkConfig
from threatqa.evaluation import default_eval_dir
from threatqa.index import input_fingerprint, open_index

pytestmark = pytest.mark.slow


def _big_docs(folder: Path) -> None:
    """About 2 MB of real text: the SQuAD paragraphs, repeated in several files."""
    data = json.loads((default_eval_dir() / "squad2-dev-subset.json").read_text(encoding="utf-8"))
    text = "\n\n".join(p["context"] for a in data["data"] for p in a["paragraphs"])
    for i in range(12):
        (folder / f"report-{i}.txt").write_text(f"Copy {i}.\n\n{text}", encoding="utf-8")


def test_build_killed_at_random_points_keeps_the_old_index(tmp_path: Path) -> None:
    docs, index = tmp_path / "docs", tmp_path / "index"
    docs.mkdir()
    (docs / "first.txt").write_text("The first version of the index.\n", encoding="utf-8")
    env = os.environ | {"THREATQA_MODEL": "", "THREATQA_DOCS": str(docs), "THREATQA_INDEX": str(index)}
    command = [sys.executable, "-m", "threatqa.cli", "index"]
    subprocess.run(command, env=env, check=True, capture_output=True, timeout=120)
    first = open_index(index).version
    _big_docs(docs)
    started = time.monotonic()
    subprocess.run(command, env=env, check=True, capture_output=True, timeout=300)  # how long a full build takes
    full = time.monotonic() - started
    (docs / "report-0.txt").write_text("Changed.\n", encoding="utf-8")
    second = open_index(index).version
    assert second != first
    rng = random.Random(7)
    previous = second
    for attempt in range(5):
        (docs / "report-1.txt").write_text(f"Edit number {attempt}.\n", encoding="utf-8")
        process = subprocess.Popen(command, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        time.sleep(rng.uniform(0.05, full * 0.9))
        process.send_signal(signal.SIGKILL)
        process.wait()
        index_now = open_index(index)  # verifies every file against the manifest's checksums
        if index_now.version != previous:  # the build finished before the kill: it must be complete
            assert index_now.manifest.inputs == input_fingerprint(docs, ChunkConfig())
        assert len(index_now) > 0 and len(index_now.documents()) == len(index_now.manifest.documents)
        previous = index_now.version
