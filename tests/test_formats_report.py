"""Issue 15's must-show: one report in txt, md, html, pdf and docx gives the same title and date,
paragraph-sized passages with exact offsets, no page furniture, pages for PDF, and passages that
are recognised as the same across formats."""

from __future__ import annotations

from datetime import datetime
from pathlib import Path

import pytest

from formats import REPORT_BLOCKS, REPORT_DATE, REPORT_FURNITURE, REPORT_TITLE, REPORT_WRITERS
from threatqa.chunking import chunk_document
from threatqa.ingest import Document, IngestLimits, load_documents, read_document
from threatqa.ingest_display import display_text, text_key
from threatqa.ingest_meta import plausible_file_date, plausible_title

DATE_SOURCES = {"txt": "dateline", "md": "front matter", "html": "<time>", "pdf": "dateline", "docx": "dateline"}


@pytest.fixture(scope="module")
def report(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Document]:
    folder = tmp_path_factory.mktemp("report")
    for writer in REPORT_WRITERS.values():
        writer(folder)
    documents = load_documents(folder, warn=print, limits=IngestLimits(extract_timeout=60))
    return {d.path.rsplit(".", 1)[1]: d for d in documents}


@pytest.mark.parametrize("fmt", sorted(REPORT_WRITERS))
def test_every_format_gives_the_same_title_and_date(report: dict[str, Document], fmt: str) -> None:
    document = report[fmt]
    assert (document.title, document.date) == (REPORT_TITLE, REPORT_DATE)
    assert document.date_source == DATE_SOURCES[fmt]


@pytest.mark.parametrize("fmt", sorted(REPORT_WRITERS))
def test_passages_are_paragraphs_with_exact_offsets_and_no_furniture(report: dict[str, Document], fmt: str) -> None:
    document = report[fmt]
    chunks = chunk_document(document)
    assert all(c.text == document.text[c.start : c.end] for c in chunks)
    assert 8 <= len(chunks) <= 14 and max(len(c.text) for c in chunks) < 700, [len(c.text) for c in chunks]
    body = document.text[document.body_start :]
    assert display_text(body, document.path).startswith("Serious and organised crime kills")
    for furniture in REPORT_FURNITURE:
        assert furniture not in body, f"{furniture!r} indexed from {fmt}"


def test_pdf_paragraphs_are_whole_joined_and_dehyphenated_with_pages(report: dict[str, Document]) -> None:
    document = report["pdf"]
    for _, paragraph in REPORT_BLOCKS:
        assert paragraph in document.text, paragraph[:40]  # line joins and hyphen removal give the exact text
    assert [p.page for p in document.pages] == [1, 2, 3]
    chunks = chunk_document(document)
    assert {page for c in chunks for page in range(c.page, c.page_end + 1)} == {1, 2, 3}
    run_on = [c for c in chunks if c.page_end != c.page]
    assert run_on and "expects the threat to increase" in run_on[0].text, "a paragraph over a page break is one"
    last = next(c for c in chunks if "Our response" in c.text)
    assert (last.page_end, document.page_at(document.text.index("highest harm"))) == (3, 3)


def test_same_passages_across_formats(report: dict[str, Document]) -> None:
    keys = {fmt: [text_key(c.text, d.path) for c in chunk_document(d)] for fmt, d in report.items()}
    assert all(k == keys["txt"] for k in keys.values()), {f: len(k) for f, k in keys.items()}
    md = report["md"]
    for chunk in chunk_document(md):
        shown = display_text(chunk.text, md.path)
        assert not any(mark in shown for mark in ("**", "](", "## ", "_")), shown
        assert md.text[chunk.start : chunk.end] == chunk.text  # the quote stays the source


def test_markdown_display_of_an_exact_span() -> None:
    source = "## Major threats\n\nHostile **states** use [groups](https://x.org) and `code`.\n\n- one\n- *two*"
    assert display_text(source, "a.md") == "Major threats\n\nHostile states use groups and code.\n\none\n\ntwo"
    assert display_text(source, "a.txt") == source
    assert text_key("“Fraud” — rising", "a.txt") == text_key('"fraud"  -  RISING', "b.html")


def test_file_metadata_dates_only_when_plausible(tmp_path: Path) -> None:
    written = datetime(2024, 5, 2, 9, 0)
    assert plausible_file_date(datetime(2013, 12, 23, 23, 15), written) is None  # python-docx's template
    assert plausible_file_date(datetime(2024, 5, 2, 8, 59), written) is None  # the time the file was rendered
    assert plausible_file_date(datetime(1985, 1, 1), written) is None
    assert plausible_file_date(datetime(2023, 7, 17), written) == "2023-07-17"
    assert plausible_title("Microsoft Word - NSA_final_v3.docx") is None and plausible_title("Untitled") is None
    import docx

    for created, expected in ((None, None), (datetime(2022, 5, 1), "2022-05-01")):
        document = docx.Document()
        document.add_paragraph("Firearms seized in the United Kingdom are increasingly converted or homemade.")
        if created:
            document.core_properties.created = created
        document.save(str(tmp_path / "memo.docx"))
        read = read_document(tmp_path / "memo.docx", "memo.docx")
        assert read.date == expected and (read.date_source == "DOCX core properties (created)") == bool(expected)


def test_pdf_rendered_today_is_not_dated_by_its_metadata(tmp_path: Path) -> None:
    from formats import write_pdf

    document = read_document(write_pdf(tmp_path), "report.pdf")
    assert document.date is None and document.title == "PDF report"


def test_scanned_pdf_is_named_with_how_to_add_ocr(tmp_path: Path) -> None:
    from PIL import Image
    from reportlab.lib.pagesizes import A5
    from reportlab.pdfgen import canvas

    pdf = canvas.Canvas(str(tmp_path / "scan.pdf"), pagesize=A5)
    for _ in range(2):
        pdf.drawInlineImage(Image.new("L", (60, 80), 200), 50, 50, 300, 400)
        pdf.showPage()
    pdf.save()
    (tmp_path / "note.txt").write_text("Fraud is the most common crime.")
    warnings: list[str] = []
    documents = load_documents(tmp_path, warn=warnings.append, limits=IngestLimits(extract_timeout=0))
    assert [d.path for d in documents] == ["note.txt"]
    (warning,) = warnings
    assert "scan.pdf" in warning and "scanned" in warning and "OCR" in warning and "ocrmypdf" in warning


def test_line_end_hyphens() -> None:
    from collections import Counter

    from threatqa.ingest_pdf import _join

    words = Counter({"crypto-assets": 1, "crypto-": 1, "assets": 1})
    assert _join("use crypto-", "assets daily", words) == ("use crypto-", "")  # a compound keeps its hyphen
    assert _join("an estim-", "ated 680,000", words) == ("an estim", "")
    assert _join("the end of a line", "and the next", words) == ("the end of a line", " ")
    assert _join("Section A-", "Overview", words) == ("Section A-", " ")  # capital after: not a word break
