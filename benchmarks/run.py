"""All benchmarks, bounded to minutes: `python benchmarks/run.py` (or `make bench`).

Sizes beyond the defaults: `python benchmarks/query.py --sizes 1000000`, `python benchmarks/ann.py --sizes 1000000`,
`python benchmarks/lean.py --sizes 1000 100000 1000000 --keep DIR`.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
STEPS = [
    ["embed.py", "--passages", "1000"],
    ["ann.py", "--sizes", "10000", "100000"],
    ["lexical.py", "--sizes", "10000", "30000"],
    ["query.py", "--sizes", "1000", "100000"],
    ["lean.py", "--sizes", "1000", "10000", "--build-passages", "300", "--rounds", "1"],
    ["threads.py", "--seconds", "15"],
    ["coldstart.py"],
]

if __name__ == "__main__":
    for step in STEPS:
        print(f"\n## {' '.join(step)}", flush=True)
        subprocess.run([sys.executable, str(HERE / step[0]), *step[1:]], cwd=HERE, check=True)
