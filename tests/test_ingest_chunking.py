"""Ingest and chunking: every format, exact offsets, non-ASCII text, bad files."""

from __future__ import annotations

import itertools
from pathlib import Path

import pytest

from formats import PARAGRAPHS, WRITERS
from threatqa.chunking import ChunkConfig, chunk_document, paragraphs, sentences
from threatqa.ingest import Document, IngestLimits, load_documents, read_document


@pytest.mark.parametrize("fmt", sorted(WRITERS))
def test_every_format_gives_exact_offsets(tmp_path: Path, fmt: str) -> None:
    path = WRITERS[fmt](tmp_path)
    document = read_document(path, path.name)
    chunks = chunk_document(document, ChunkConfig(size=40, overlap=1, max_size=120))
    assert chunks, f"no passages from {fmt}"
    for chunk in chunks:
        assert chunk.text == document.text[chunk.start : chunk.end]
        assert chunk.text == chunk.text.strip()
        assert chunk.line_start <= chunk.line_end
    assert len(document.sha256) == 64 and document.id == read_document(path, path.name).id


@pytest.mark.parametrize("fmt", ["txt", "md", "html", "docx"])
def test_non_ascii_text_comes_through_unchanged(tmp_path: Path, fmt: str) -> None:
    path = WRITERS[fmt](tmp_path)
    document = read_document(path, path.name)
    for paragraph in PARAGRAPHS:
        assert paragraph in document.text


def test_metadata_per_format(tmp_path: Path) -> None:
    docs = {d.path: d for d in (read_document(WRITERS[f](tmp_path), WRITERS[f](tmp_path).name) for f in WRITERS)}
    assert docs["notes.txt"].date == "2024-02-01"
    assert docs["notes.txt"].text[docs["notes.txt"].body_start :].startswith("Organised")
    assert docs["brief.md"].title == "Threat brief"
    assert (docs["page.html"].title, docs["page.html"].date) == ("Web report", "2024-03-05")
    assert "script text" not in docs["page.html"].text
    assert docs["memo.docx"].title == "Word memo"
    assert docs["report.pdf"].title == "PDF report"


def test_pdf_passages_carry_page_numbers(tmp_path: Path) -> None:
    path = WRITERS["pdf"](tmp_path)
    document = read_document(path, path.name)
    pages = {c.page for c in chunk_document(document, ChunkConfig(size=10, max_size=60))}
    assert pages == {1, 2}
    offset = document.text.index("firearms")
    assert document.page_at(offset) == 2


def test_shipped_corpus_header_and_title(docs: Path) -> None:
    (document,) = load_documents(docs)
    assert document.date == "2023-07-17"
    assert document.title == "NCA annual assessment speech 2023-07-17"
    assert document.text[document.body_start :].startswith("Hostile countries")


def test_bad_files_are_warned_about_and_the_rest_indexed(tmp_path: Path) -> None:
    WRITERS["txt"](tmp_path)
    (tmp_path / "empty.txt").write_text("   \n")
    (tmp_path / "binary.txt").write_bytes(b"\x00\x01\x02ELF\x00" * 20)
    (tmp_path / "latin1.txt").write_bytes("caf\xe9".encode("latin-1"))
    (tmp_path / "broken.pdf").write_bytes(b"%PDF-1.4 this is not a pdf")
    (tmp_path / "broken.docx").write_bytes(b"PK not a zip")
    (tmp_path / "image.png").write_bytes(b"\x89PNG")
    (tmp_path / ".hidden.txt").write_text("ignored")
    sub = tmp_path / "sub"
    sub.mkdir()
    WRITERS["md"](sub)
    warnings: list[str] = []
    documents = load_documents(tmp_path, warn=warnings.append)
    assert sorted(d.path for d in documents) == ["notes.txt", "sub/brief.md"]
    named = " ".join(warnings)
    for name in ("empty.txt", "binary.txt", "latin1.txt", "broken.pdf", "broken.docx", "image.png"):
        assert name in named
    assert all("\n" not in w for w in warnings)
    assert ".hidden" not in named


def test_oversized_file_is_skipped(tmp_path: Path) -> None:
    with (tmp_path / "big.txt").open("wb") as handle:
        handle.truncate(200 * 1024 * 1024)  # a sparse 200 MB file: no time or disk spent writing it
    WRITERS["txt"](tmp_path)
    warnings: list[str] = []
    documents = load_documents(tmp_path, max_file_mb=50, warn=warnings.append)
    assert [d.path for d in documents] == ["notes.txt"]
    assert "big.txt" in warnings[0] and "MB" in warnings[0]


def test_sentences_respect_abbreviations_and_quotes() -> None:
    text = "Mr. Biggar spoke. “It is serious,” he said. Fraud rose 40%. Cards were cloned, e.g. In shops."
    spans = sentences(text, paragraphs(text)[0])
    assert [text[s.start : s.end] for s in spans] == [
        "Mr. Biggar spoke.",
        "“It is serious,” he said.",
        "Fraud rose 40%.",
        "Cards were cloned, e.g. In shops.",
    ]


def _doc(text: str) -> Document:
    return Document(id="d", path="d.txt", title="d", sha256="0" * 64, date=None, text=text)


def test_short_paragraphs_join_the_following_ones_and_long_ones_split() -> None:
    text = "Short one.\n\nAnother short.\n\n" + " ".join(f"Sentence number {i} is here." for i in range(40))
    chunks = chunk_document(_doc(text), ChunkConfig(size=60, overlap=1, max_size=200))
    first = chunks[0]
    assert first.text.startswith("Short one.") and first.paragraph == 1 and first.paragraph_end >= 2
    long_parts = [c for c in chunks if c.paragraph == 3]
    assert len(long_parts) > 3 and all(len(c.text) <= 200 for c in long_parts)
    for before, after in itertools.pairwise(long_parts):
        assert after.start < before.end, "consecutive windows share one sentence"
    assert all(c.text == text[c.start : c.end] for c in chunks)


def test_each_paragraph_is_in_one_passage_near_the_target_size() -> None:
    paras = ["A" * 130, "B" * 138, "C" * 132, "D" * 114, "E" * 204, "F" * 217, "G" * 10]
    text = "\n\n".join(paras)
    chunks = chunk_document(_doc(text), ChunkConfig(size=300))
    # E (204) stays alone: F would take it further from 300; the short run F+G at the end joins it
    assert [(c.paragraph, c.paragraph_end) for c in chunks] == [(1, 2), (3, 4), (5, 7)]
    assert "".join(c.text for c in chunks).replace("\n", "") == "".join(paras), "every character once"


def test_passages_are_bounded_whatever_the_punctuation() -> None:
    text = "lower case words with no full stop " * 3000 + "x" * 5000  # 105,000 + 5,000 characters, one line
    chunks = chunk_document(_doc(text), ChunkConfig(size=300, max_size=2000))
    assert max(len(c.text) for c in chunks) <= 2000 and len(chunks) >= 55
    assert all(c.text == text[c.start : c.end] for c in chunks)
    assert all(a.end <= b.start for a, b in itertools.pairwise(chunks)), "no passage overlaps the next"


def test_zip_bomb_docx_is_refused(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import zipfile

    monkeypatch.setattr("threatqa.ingest_formats.MAX_UNPACKED_BYTES", 1024 * 1024)
    with zipfile.ZipFile(tmp_path / "bomb.docx", "w", compression=zipfile.ZIP_DEFLATED) as archive:
        archive.writestr("word/document.xml", b"\0" * (8 * 1024 * 1024))  # 8 MB of zeros, ~8 KB packed
    WRITERS["txt"](tmp_path)
    warnings: list[str] = []
    documents = load_documents(tmp_path, warn=warnings.append, limits=IngestLimits(extract_timeout=0))  # patch seen
    assert [d.path for d in documents] == ["notes.txt"]
    assert "bomb.docx" in warnings[0] and "zip bomb" in warnings[0]


def test_a_heading_opens_the_passage_it_heads() -> None:
    body = "\n\n".join(["A paragraph of context " * 10, "Major threats", "Hostile states use criminals. " * 6,
                        "Drugs and firearms:", "Cocaine use rose. " * 20])  # fmt: skip
    document = Document(id="d", path="d.txt", title="t", sha256="0", date=None, text=body, body_start=0)
    chunks = chunk_document(document, ChunkConfig(size=300))
    assert [c.text.split("\n")[0] for c in chunks][1:] == ["Major threats", "Drugs and firearms:"]
    assert all(not c.text.rstrip().endswith(("Major threats", "firearms:")) for c in chunks)
