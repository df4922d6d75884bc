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
    lock = (ROOT / "requirements.lock").read_text().splitlines()
    pins = [line for line in lock if line and not line.startswith("#")]
    assert pins and all("==" in line for line in pins)
    names = {re.split(r"==", line)[0].lower().replace("_", "-") for line in pins}
    for dependency in tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"]:
        name = re.split(r"[<>=!\[ ;]", dependency)[0].lower().replace("_", "-")
        assert name in names, f"{name} is not locked"
    assert Version(version("gradio")) == Version(
        next(p for p in pins if p.lower().startswith("gradio==")).split("==")[1]
    )
