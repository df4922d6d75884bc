"""Index bytes against text bytes as the corpus grows, the old lexical format beside the new in the
same run, and question latency at the sizes asked.

    python benchmarks/scale.py --sizes 1000 100000 --timing 100000
    python benchmarks/scale.py --sizes 1000000 --no-old          # ~15 min, ~6 GB of memory

Each size: n generated passages (2-4 real SQuAD sentences each, `common.passages`, 100 to a
file) are indexed with `build_index` as `query.py` does (vectors from the ONNX int8 all-MiniLM-L6
architecture up to 2,000 passages, clustered synthetic vectors above: the dense files' sizes are
the same either way). The table splits the index folder into the passage store (chunks.sqlite and
the compressed text, chunks.blocks), the lexical index (bm25/), the dense vectors (dense.faiss and
its compressed codes dense.codes, and the window map), the term vectors and the rest, each as
bytes / text bytes (the documents' files).

Old format: the lexical index of index schema 5 (its character view stored every n-gram of every
sentence with its weights, 12 bytes each) is built from the same passages with that version's
code, read from git (commit 833f93d), and its bytes replace the new lexical index's in the "old"
total; the other parts did not change. --timing runs `query.py`'s serving measurements (ONNX int8,
200 SQuAD questions, index in the page cache) on the sizes given: `Retriever.search` and search +
answer p50 / p95, and the lexical search alone; and times the old and the new lexical index's
search (k=50) on the same passages in turn on each question, three rounds, so that the two see the
machine in the same state.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from types import ModuleType

from common import ROOT, passages, percentiles, squad_questions, table, time_interleaved
from query import build

from threatqa.lexical import LexicalIndex

OLD_COMMIT = "833f93d"  # the last commit with the schema-5 lexical index


def old_lexical(tmp: Path, repo: Path) -> ModuleType | None:
    """threatqa/lexical.py as it was at OLD_COMMIT, imported under another name (None without git)."""
    source = subprocess.run(["git", "-C", str(repo), "show", f"{OLD_COMMIT}:src/threatqa/lexical.py"],
                            capture_output=True, text=True, check=False)  # fmt: skip
    if source.returncode:
        return None
    path = tmp / "lexical_schema5.py"
    path.write_text(source.stdout)
    spec = importlib.util.spec_from_file_location("lexical_schema5", path)
    module = importlib.util.module_from_spec(spec)  # type: ignore[arg-type]
    sys.modules[spec.name] = module  # type: ignore[union-attr]  # dataclasses look their module up
    spec.loader.exec_module(module)  # type: ignore[union-attr]
    return module


def part(path: Path, version: Path) -> str:
    name = str(path.relative_to(version))
    if name.startswith("bm25/"):
        return "lexical"
    if name.startswith("chunks"):
        return "store"
    if name.split(".")[0] in ("dense", "windows", "window-counts", "vectors"):
        return "vectors"
    if name.split(".")[0] == "terms":
        return "terms"
    return "other"


def sizes(folder: Path) -> dict[str, int]:
    """Bytes of the index's current version, by part, and of the documents' text."""
    version = folder / "index" / (folder / "index" / "CURRENT").read_text().strip()
    out = {"store": 0, "lexical": 0, "vectors": 0, "terms": 0, "other": 0}
    for path in version.rglob("*"):
        if path.is_file():
            out[part(path, version)] += path.stat().st_size
    out["text"] = sum(p.stat().st_size for p in (folder / "docs").glob("*.txt"))
    return out


def folder_bytes(folder: Path) -> int:
    return sum(p.stat().st_size for p in folder.rglob("*") if p.is_file())


def timing(folder: Path, model: str) -> dict[str, list[float]]:
    command = [sys.executable, str(Path(__file__).with_name("query.py")), "--serve", str(folder), "--model", model,
               "--queries", "200"]  # fmt: skip
    out = subprocess.run(command, capture_output=True, text=True, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])  # type: ignore[no-any-return]


def side_by_side(old: object, new: LexicalIndex) -> list[float]:
    """p50 and p95 of the old and the new index's search, in turn on each question, 3 rounds."""
    for question in squad_questions()[200:400]:  # pages mapped in, as in a running server
        old.search(question, 50)  # type: ignore[attr-defined]
        new.search(question, 50)
    fns = {"old": lambda q: old.search(q, 50), "new": lambda q: new.search(q, 50)}  # type: ignore[attr-defined]
    samples = time_interleaved(fns, squad_questions()[:200])  # type: ignore[arg-type]
    return [*percentiles(samples["old"]), *percentiles(samples["new"])]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[1000, 100_000])
    parser.add_argument("--timing", type=int, nargs="*", default=[], help="sizes to time questions at")
    parser.add_argument("--no-old", action="store_true", help="skip building the old lexical format")
    parser.add_argument("--repo", type=Path, default=ROOT, help="git checkout to read the old code from")
    args = parser.parse_args()
    rows, times, lexical = [], [], []
    with tempfile.TemporaryDirectory() as tmp:
        old = None if args.no_old else old_lexical(Path(tmp), args.repo)
        for n in args.sizes:
            folder = Path(tmp) / str(n)
            t = time.perf_counter()
            built = build(n, folder, real_vectors=2000)
            build_s = time.perf_counter() - t
            got = sizes(folder)
            text, total = got["text"], sum(v for k, v in got.items() if k != "text")
            old_lexical_bytes = None
            if old is not None:
                texts = passages(n, seed=3)
                before = old.LexicalIndex.build(texts, Path(tmp) / "old-bm25")
                old_lexical_bytes = folder_bytes(Path(tmp) / "old-bm25")
                if n in args.timing:
                    lexical.append([f"{n:,}", *side_by_side(before, LexicalIndex.build(texts, Path(tmp) / "new-bm25"))])
                subprocess.run(["rm", "-rf", str(Path(tmp) / "old-bm25"), str(Path(tmp) / "new-bm25")], check=True)
            old_total = total - got["lexical"] + old_lexical_bytes if old_lexical_bytes else None
            rows.append([f"{built['passages']:,}", text / 1e6, build_s,
                         *(got[k] / text for k in ("store", "lexical", "vectors", "terms", "other")), total / text,
                         "-" if old_lexical_bytes is None else old_lexical_bytes / text,
                         "-" if old_total is None else old_total / text, total / 1e6])  # fmt: skip
            if n in args.timing:
                s = timing(folder, str(built["model"]))
                times.append([f"{built['passages']:,}", s["bare"][0], s["lexical"][0], s["lexical"][1],
                              s["search"][0], s["search"][1], s["answer"][0], s["answer"][1]])  # fmt: skip
            subprocess.run(["rm", "-rf", str(folder)], check=True)
    table(
        "Index bytes / text bytes by part (new format; old = the schema-5 lexical index in its place)",
        ["passages", "text MB", "build s", "store", "lexical", "dense vectors", "term vectors", "other", "total",
         "old lexical",
         "old total", "index MB"],
        rows,
    )  # fmt: skip
    if lexical:
        table(
            "Lexical search alone (k=50), old and new format on the same passages, timed in turn, ms",
            ["passages", "old p50", "old p95", "new p50", "new p95"],
            lexical,
        )
    if times:
        table(
            "Question latency, ms (ONNX int8, 200 SQuAD questions, index in the page cache; query.py --serve)",
            ["passages", "bare embed + FAISS p50", "lexical p50", "lexical p95", "search p50", "search p95",
             "search + answer p50", "search + answer p95"],
            times,
        )  # fmt: skip


if __name__ == "__main__":
    main()
