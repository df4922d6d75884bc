"""The server makes no outbound connection through its whole life with a local model (issue 13, item 9).

Runs benchmarks/egress.py: the server inside a network namespace with loopback only, under strace
and a Python audit hook, driven through start-up, the page, the API, the Gradio chat endpoint with
a history bucket header, and Gradio's file, upload and proxy routes with outside URLs (a listener
on 127.0.0.2 records any fetch). Needs root, `unshare` and `strace`; skipped otherwise.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))

from egress import cannot_run  # noqa: E402

pytestmark = pytest.mark.slow


def test_no_outbound_connection_in_hybrid_and_lexical_mode(tmp_path: Path) -> None:
    reason = cannot_run()
    if reason:
        pytest.skip(f"egress check cannot run here: {reason}")
    out = tmp_path / "egress.json"
    run = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / "egress.py"), "--json", str(out)],
        capture_output=True, text=True, timeout=1500,
    )  # fmt: skip
    assert out.exists(), run.stdout[-3000:] + run.stderr[-3000:]
    results = json.loads(out.read_text())
    assert set(results) == {"hybrid", "lexical"}
    for mode, result in results.items():
        totals, phases = result["totals"], {p["name"]: p for p in result["phases"]}
        assert f"{mode} mode" in totals["server_said"], totals["server_said"]
        assert phases["start-up (index build, model, app)"]["status"] == "200"
        assert totals["canary_strace"] == 1 and totals["canary_hook"] == 1, "a recorder did not see the server"
        assert totals["outbound"] == 0 and totals["dns"] == 0, [p["outbound"] for p in phases.values()]
        assert totals["hook_outbound"] == 0, [p["hook"] for p in phases.values()]
        assert totals["listener_connections"] == 0 and totals["to_outside_host"] == 0
        for name, phase in phases.items():  # the answers really went out; the outward routes are closed
            if name in ("POST /api/ask", "GET /", "GET /config"):
                assert phase["status"] == "200", (name, phase["status"])
            if "file=" in name or "upload" in name or "proxy=" in name:
                assert phase["status"] == "404", (name, phase["status"])
        assert phases["gradio /gradio_api/call/ask + history bucket"]["status"] == "200, 200 complete"
    assert run.returncode == 0, run.stdout[-3000:]
