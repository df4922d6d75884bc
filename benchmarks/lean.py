"""Issue 17's table in one command: index bytes / text bytes, audit bytes per answer, and build
documents/s and passages/s against bare encode, at each corpus size.

    python benchmarks/lean.py --sizes 1000 100000 1000000 --keep DIR     # 1M: a ~30 min build, once

Each size: the corpus `query.py` builds (generated passages of real SQuAD sentences, 100 to a file;
vectors from the ONNX int8 all-MiniLM-L6 architecture up to 2,000 passages, clustered synthetic
vectors above: the files' sizes are the same either way), reused from --keep DIR/<size> when
`query.py --keep DIR` or this script built it there before. Then:

- index / text: bytes of the index's live version against the bytes of the documents' text;
- audit per answer: `Engine.ask` answers --answers SQuAD questions at k=5 into a new audit log, as
  the server does; what the log's files grew by (checkpointed), divided by the answers, and the
  part of it in the table of passage texts (each distinct text stored once);
- build: the corpus's build with `build_index`, in documents/s and passages/s. Above 2,000
  passages its vectors are synthetic, so that build excludes embedding; the build against bare
  encode is measured with the real model (the bundled all-MiniLM-L6-v2, PyTorch and ONNX int8) on a
  corpus of --build-passages, both timed in turn --rounds times, as `embed.py --build-only` does
  (bare encode of exactly the texts the build embedded; "text embedded / documents' text" says how
  many times over the build embeds the text: overlapping passages embedded it twice before issue 17).
  At each size the "projected" ratio adds the build's own work there (measured) to the time bare
  encode takes for that size's text at the rate measured: bare / (bare + the rest).

Before: the same command on the code before issue 17, a checkout of 833f93d (the scripts here
drive its `build_index`, `Engine` and audit log, whose interfaces they share):

    git worktree add /tmp/before 833f93d
    PYTHONPATH=/tmp/before/src python benchmarks/lean.py --sizes 1000 100000 --keep /tmp/keep-before
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
import time
from pathlib import Path

from common import file_bytes, squad_questions, table
from embed import build_rates
from query import corpus, open_engine
from scale import sizes


def audit_per_answer(folder: Path, model: str, answers: int) -> tuple[float, float]:
    """Bytes the audit log grows by per answer at k=5, and of them the passage texts'."""
    log = folder / "audit-lean.sqlite3"
    for stale in folder.glob("audit-lean.sqlite3*"):
        stale.unlink()
    _, engine = open_engine(folder, model, log.name)
    for question in squad_questions()[:answers]:
        engine.ask(question, k=5, channel="api")  # type: ignore[attr-defined]
    close = getattr(engine.audit, "close", None)  # type: ignore[attr-defined]  # (the code before issue 17 had none)
    if close is not None:
        close()  # the last connection checkpoints the WAL into the file
    total, texts = file_bytes(log)
    return total / answers, texts / answers


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[1000, 100_000])
    parser.add_argument("--keep", type=Path, help="corpora built under this folder (query.py --keep's layout)")
    parser.add_argument("--answers", type=int, default=200, help="answers logged at each size")
    parser.add_argument("--build-passages", type=int, default=1000, help="corpus for the build against bare encode")
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    t = time.perf_counter()
    weights, rates = build_rates(args.build_passages, args.rounds)
    print(f"build against bare encode: {time.perf_counter() - t:.0f} s", file=sys.stderr)
    # bare encode's speed in characters of the documents' text per second, per backend
    bare_cps = {r["backend"]: r["text_chars"] / r["bare_s"] for r in rates}  # type: ignore[operator]
    rows = [
        [f"{r['passages']:,} ({weights}, {r['backend']})", "-", "-", "-", "-", "-",
         f"{r['documents'] / r['build_s']:.1f}", f"{r['passages'] / r['build_s']:.0f}",  # type: ignore[operator]
         f"{r['embedded_chars'] / r['text_chars']:.2f}", f"{r['passages'] / r['bare_s']:.0f}",  # type: ignore[operator]
         f"{r['bare_s'] / r['build_s']:.3f}", "with the model"]  # type: ignore[operator]
        for r in rates
    ]  # fmt: skip
    with tempfile.TemporaryDirectory() as tmp:
        for n in args.sizes:
            t = time.perf_counter()
            folder = args.keep / str(n) if args.keep else Path(tmp) / str(n)
            built = corpus(n, folder, real_vectors=2000)
            got = sizes(folder)
            index = sum(v for k, v in got.items() if k != "text")
            per_answer, texts = audit_per_answer(folder, str(built["model"]), args.answers)
            documents = len(list((folder / "docs").glob("*.txt")))
            passages, build_s = int(built["passages"]), float(built["build_s"])  # type: ignore[arg-type]
            synthetic = built["vectors"] == "synthetic"  # then the build's time is its work besides embedding
            # bare encode of this size's text at the rate measured, against it plus the build's own work
            projected = [f"{backend} {got['text'] / cps / (got['text'] / cps + build_s):.2f}"
                         for backend, cps in bare_cps.items()] if synthetic else []  # fmt: skip
            rows.append([f"{passages:,}", f"{got['text'] / 1e6:.2f}", f"{index / 1e6:.1f}",
                         f"{index / got['text']:.2f}", f"{per_answer:,.0f}", f"{texts:,.0f}",
                         f"{documents / build_s:.1f}", f"{passages / build_s:.0f}", "-", "-",
                         ", ".join(projected) or "-",
                         "without embedding (synthetic vectors)" if synthetic else "with the model's vectors",
                         ])  # fmt: skip
            if not args.keep:
                shutil.rmtree(folder)
            print(f"{n:,} passages: {time.perf_counter() - t:.0f} s", file=sys.stderr)
    table(
        f"Lean at scale (issue 17): index, audit and build; {args.answers} answers at k=5 per size; build against bare "
        f"encode measured on {args.build_passages:,} passages, median of {args.rounds} rounds, each side in turn",
        ["passages", "text MB", "index MB", "index / text (goal <= 3)", "audit bytes / answer (goal <= 2,048)",
         "of which new texts", "build documents/s", "build passages/s", "text embedded / documents' text",
         "bare encode passages/s",
         "build / bare encode (goal >= 0.9; projected where synthetic)", "build timed"],
        rows,
    )  # fmt: skip


if __name__ == "__main__":
    main()
