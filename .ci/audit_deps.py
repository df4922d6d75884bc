"""Audit the locked dependencies (every lock file named, requirements.lock by default) with pip-audit.

Fails (exit 1) on any known vulnerability. pip-audit reads per-version data from PyPI's JSON API;
where the network's package registry does not serve it, every package is skipped: that is said
plainly (the audit did not happen) rather than reported as "no known vulnerabilities".
"""

from __future__ import annotations

import json
import subprocess
import sys


def main(locks: list[str]) -> int:
    requirements = [arg for lock in locks for arg in ("-r", lock)]
    command = [sys.executable, "-m", "pip_audit", *requirements, "--no-deps", "--disable-pip", "--format", "json",
               "--progress-spinner", "off"]  # fmt: skip
    result = subprocess.run(command, capture_output=True, text=True, timeout=600)
    try:
        report = json.loads(result.stdout)
    except json.JSONDecodeError:
        print(f"dependency audit failed to run:\n{result.stderr[-2000:]}")
        return 1
    packages = report.get("dependencies", [])
    vulnerable = [p for p in packages if p.get("vulns")]
    skipped = [p for p in packages if p.get("skip_reason")]
    for package in vulnerable:
        ids = ", ".join(v["id"] for v in package["vulns"])
        print(f"VULNERABLE {package['name']} {package.get('version')}: {ids}")
    audited = len(packages) - len(skipped)
    print(f"dependency audit: {audited} of {len(packages)} locked packages audited, {len(vulnerable)} vulnerable")
    if packages and not audited:
        print("NOT AUDITED: the vulnerability data (PyPI's per-version JSON) is unreachable from this network")
    return 1 if vulnerable else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:] or ["requirements.lock"]))
