"""Build cost of the passages, before and after passages stopped overlapping, with the real model.

Before (threatqa up to schema 4): a passage started at every paragraph and took in the following
ones up to 300 characters, so most text was in two passages, and each passage was embedded whole
(the model cut what passed its 256 tokens). After: each paragraph is in one passage, and each
passage is embedded as sentence windows within the token limit (threatqa.chunking).

Both are run here on the same documents, in the same process, one after the other (median of 3):
the baseline's packing is reproduced below from the old code. Printed per corpus: passages,
texts embedded, characters embedded, truncated texts, embedding seconds, passages/s and
characters of document text/s; and the whole `build_index` time of the new code.

Usage: python benchmarks/chunking.py
"""

from __future__ import annotations

import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from threatqa.chunking import ChunkConfig, Span, _windows, chunk_documents, paragraphs, sentences, windows
from threatqa.embeddings import BUNDLED_MODEL, load_embedder
from threatqa.evaluation import default_eval_dir, dev_sets
from threatqa.index import build_index
from threatqa.ingest import load_documents

ROUNDS = 3


def old_passages(text: str, body_start: int, size: int = 300, max_size: int = 2000) -> list[Span]:
    """The packing threatqa used before: a passage from every paragraph, overlapping the next ones."""
    paras, passages = paragraphs(text, body_start), []
    for first, para in enumerate(paras):
        if para.end - para.start > max_size:
            passages.extend(_windows(sentences(text, para), max_size, 1))
            continue
        last = first
        while paras[last].end - para.start < size and last + 1 < len(paras):
            if paras[last + 1].end - para.start > max_size:
                break
            last += 1
        short_tail = paras[last].end - para.start < size and last == len(paras) - 1
        if short_tail and first > 0 and passages and passages[-1].end >= para.end:
            continue
        passages.append(Span(para.start, paras[last].end))
    return passages


def corpora() -> dict[str, dict[str, str]]:
    squad, seed = (eval_set.documents for eval_set in dev_sets(default_eval_dir()))
    # short paragraphs, as in briefings and bulleted reports: each SQuAD paragraph one document,
    # each of its sentences a paragraph
    short = {}
    for name, text in squad.items():
        for i, para in enumerate(text.split("\n\n")):
            spans = sentences(para, Span(0, len(para)))
            short[f"{Path(name).stem}-{i}.txt"] = "\n\n".join(para[s.start : s.end] for s in spans)
    return {"squad articles": squad, "NCA corpus": seed, "short paragraphs": short}


def median_seconds(work: Callable[..., object], *args: object) -> float:
    times = []
    for _ in range(ROUNDS):
        began = time.perf_counter()
        work(*args)
        times.append(time.perf_counter() - began)
    return statistics.median(times)


def rebuild(docs: Path, folder: Path, embedder: object) -> None:
    """A whole build from scratch (a new index folder each time)."""
    build_index(docs, folder / f"index-{time.time_ns()}", embedder, warn=lambda m: None)  # type: ignore[arg-type]


def main() -> None:
    embedder = load_embedder(BUNDLED_MODEL)
    print(f"model {BUNDLED_MODEL} (torch), {ROUNDS} rounds, median\n")
    header = "  " + " ".join(
        f"{h:>8}" for h in ("", "passages", "embedded", "chars", "cut", "embed s", "pass/s", "ch/s")
    )
    for name, documents in corpora().items():
        with tempfile.TemporaryDirectory() as tmp:
            docs = Path(tmp) / "docs"
            docs.mkdir()
            for file, text in documents.items():
                (docs / file).write_text(text, encoding="utf-8")
            loaded = load_documents(docs, 50.0, warn=lambda m: None)
            text_chars = sum(len(d.text) - d.body_start for d in loaded)
            old = [d.text[s.start : s.end] for d in loaded for s in old_passages(d.text, d.body_start)]
            new_chunks = chunk_documents(loaded, ChunkConfig())
            by_doc = {d.id: d for d in loaded}
            spans = [windows(by_doc[c.doc_id].text, [Span(c.start, c.end)], 200, embedder.fits)[0] for c in new_chunks]
            new = [by_doc[c.doc_id].text[s.start : s.end] for c, part in zip(new_chunks, spans) for s in part]
            old_s = median_seconds(embedder.encode_documents, old)
            new_s = median_seconds(embedder.encode_documents, new)
            build_s = median_seconds(rebuild, docs, Path(tmp), embedder)
            print(f"{name}: {len(loaded)} documents, {text_chars:,} characters of text")
            print(header)
            for label, passages, texts, seconds in (("before", len(old), old, old_s),
                                                     ("after", len(new_chunks), new, new_s)):  # fmt: skip
                cut = sum(n > embedder.max_tokens for n in embedder.count_tokens(texts))
                cells = (passages, len(texts), f"{sum(map(len, texts)):,}", cut, f"{seconds:.2f}",
                         f"{passages / seconds:.1f}", f"{text_chars / seconds:,.0f}")  # fmt: skip
                print(f"  {label:>8} " + " ".join(f"{c:>8}" for c in cells))
            rate = f"{len(new_chunks) / build_s:.1f} passages/s, {text_chars / build_s:,.0f} characters/s"
            print(f"  after, whole build_index (store, BM25, windows, vectors, FAISS): {build_s:.2f} s, {rate}\n")


if __name__ == "__main__":
    main()
