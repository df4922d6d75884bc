"""Dependency floors: gradio's floor excludes its known file-access advisories."""

from __future__ import annotations

import re
import tomllib
from importlib.metadata import version
from pathlib import Path

from packaging.version import Version

ROOT = Path(__file__).resolve().parents[1]
GRADIO_SAFE = Version("6.16.0")  # GHSA-j36p-7w88-g82j (path traversal, fixed 6.16.0); CVE-2026-28414 (6.7.0)


def test_gradio_floor_excludes_file_access_advisories() -> None:
    dependencies = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"]
    (gradio,) = [d for d in dependencies if re.match(r"gradio\b", d)]
    floor = Version(re.search(r">=\s*([\d.]+)", gradio).group(1))
    assert floor >= GRADIO_SAFE
    assert Version(version("gradio")) >= floor


def test_lock_pins_every_dependency_exactly() -> None:
    # one entry per requirement once the continuation lines are joined: "name==version [; markers] --hash=..."
    text = (ROOT / "requirements.lock").read_text().replace("\\\n", " ")
    entries = [line.strip() for line in text.splitlines() if line.strip() and not line.startswith("#")]
    assert entries and all(re.match(r"[\w.-]+==\S+", entry) for entry in entries)
    assert all("--hash=sha256:" in entry for entry in entries), "pip's hash-checking mode needs every entry hashed"
    pins = {
        re.sub(r"[-_.]+", "-", m.group(1)).lower(): m.group(2)
        for m in (re.match(r"([\w.-]+)==([^\s;]+)", entry) for entry in entries)
    }
    # torch is installed first, from its CPU build (see the Makefile), and stays out of the hash-checked lock
    assert "torch" not in pins
    for dependency in tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"]:
        name = re.sub(r"[-_.]+", "-", re.split(r"[<>=!\[ ;]", dependency)[0]).lower()
        assert name == "torch" or name in pins, f"{name} is not locked"
    assert Version(version("gradio")) == Version(pins["gradio"])
