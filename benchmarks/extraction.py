"""Extraction speed and fidelity per format: the current readers against the previous ones, and
the PDF libraries compared, in one run on the same files.

The files are issue 15's report (tests/formats.py) repeated `--repeat` times: txt, md, html (nav,
cookie banner, scripts, footer), pdf (A5 pages, running header, page numbers, hyphenated line
ends) and docx. "Before" is threatqa's previous extraction, kept below (BeautifulSoup for HTML,
pypdf page text for PDF, python-docx paragraphs); "after" is `threatqa.ingest_formats.extract`,
run in this process (no child, so only the parsing is timed). Fidelity: the share of the
report's paragraphs found verbatim in the extracted text, and of its furniture strings found.

PDF libraries (text layer only): pypdf `extract_text`, pypdfium2 `get_text_range`, pdfminer.six
`extract_text` (layout analysis), pdfplumber `extract_text` (pdfminer underneath), and threatqa
(pdfminer's layout plus furniture removal, line joins and de-hyphenation).

Usage: python benchmarks/extraction.py [--repeat N] [--rounds R]
"""

from __future__ import annotations

import argparse
import io
import re
import statistics
import sys
import tempfile
import time
import zipfile
from collections.abc import Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

import formats  # tests/formats.py: the report's writers
from threatqa.ingest_formats import extract

# ------------------------------------------------------------------ the previous extraction (kept for comparison)

_BLOCK_TAGS = (
    "p", "div", "section", "article", "header", "footer", "aside", "main", "nav", "li", "ul", "ol",
    "table", "tr", "td", "th", "h1", "h2", "h3", "h4", "h5", "h6", "blockquote", "pre", "figure",
    "figcaption", "dl", "dt", "dd", "hr", "address",
)  # fmt: skip


def _tidy(text: str) -> str:
    text = text.replace("\r\n", "\n").replace("\r", "\n").replace("\xa0", " ")
    lines = [re.sub(r"[ \t\f\v]+", " ", line).strip() for line in text.split("\n")]
    return re.sub(r"\n{3,}", "\n\n", "\n".join(lines)).strip()


def old_text(data: bytes) -> str:
    return data.decode("utf-8-sig").replace("\r\n", "\n")


def old_html(data: bytes) -> str:
    from bs4 import BeautifulSoup

    soup = BeautifulSoup(data.decode("utf-8-sig"), "html.parser")
    for tag in soup(["script", "style", "noscript", "template", "head", "svg"]):
        tag.decompose()
    for tag in soup.find_all("br"):
        tag.replace_with("\n")
    for tag in soup.find_all(_BLOCK_TAGS):
        tag.insert_before("\n\n")
        tag.insert_after("\n\n")
    return _tidy(soup.get_text())


def old_pdf(data: bytes) -> str:
    from pypdf import PdfReader

    return "\n\n".join(_tidy(page.extract_text() or "") for page in PdfReader(io.BytesIO(data)).pages)


def old_docx(data: bytes) -> str:
    import docx

    with zipfile.ZipFile(io.BytesIO(data)) as archive:
        sum(member.file_size for member in archive.infolist())
    document = docx.Document(io.BytesIO(data))
    paragraphs = [p.text for p in document.paragraphs]
    for table in document.tables:
        for row in table.rows:
            paragraphs.append(" | ".join(cell.text for cell in row.cells))
    return _tidy("\n\n".join(paragraphs))


OLD = {"txt": old_text, "md": old_text, "html": old_html, "pdf": old_pdf, "docx": old_docx}

# ------------------------------------------------------------------ PDF libraries


def pdf_pypdf(data: bytes) -> str:
    return old_pdf(data)


def pdf_pypdfium2(data: bytes) -> str:
    import pypdfium2

    document = pypdfium2.PdfDocument(data)
    return "\n\n".join(page.get_textpage().get_text_range() for page in document)


def pdf_pdfminer(data: bytes) -> str:
    from pdfminer.high_level import extract_text

    return extract_text(io.BytesIO(data))


def pdf_pdfplumber(data: bytes) -> str:
    import pdfplumber

    with pdfplumber.open(io.BytesIO(data)) as pdf:
        return "\n\n".join(page.extract_text() or "" for page in pdf.pages)


def pdf_threatqa(data: bytes) -> str:
    return extract(".pdf", data).text


PDF_LIBRARIES = {
    "pypdf": pdf_pypdf,
    "pypdfium2": pdf_pypdfium2,
    "pdfminer.six": pdf_pdfminer,
    "pdfplumber": pdf_pdfplumber,
    "threatqa (pdfminer.six layout + joins)": pdf_threatqa,
}

# ------------------------------------------------------------------ corpus and measures


def write_corpus(folder: Path, repeat: int) -> dict[str, Path]:
    """The report in every format, its blocks repeated `repeat` times (headings numbered)."""
    original = list(formats.REPORT_BLOCKS)
    formats.REPORT_BLOCKS[:] = [
        (kind, f"{text} {n + 1}" if kind == "h" else text) for n in range(repeat) for kind, text in original
    ]
    try:
        return {fmt: writer(folder) for fmt, writer in formats.REPORT_WRITERS.items()}
    finally:
        formats.REPORT_BLOCKS[:] = original


def fidelity(text: str) -> tuple[float, float]:
    """Share of the report's paragraphs found verbatim, and of its furniture strings found."""
    flat = " ".join(text.split())
    paragraphs = [t for kind, t in formats.REPORT_BLOCKS if kind == "p"]
    found = sum(p in flat for p in paragraphs) / len(paragraphs)
    furniture = sum(f in flat for f in formats.REPORT_FURNITURE) / len(formats.REPORT_FURNITURE)
    return found, furniture


def best_time(fn: Callable[[bytes], object], data: bytes, rounds: int) -> float:
    times = []
    for _ in range(rounds):
        began = time.perf_counter()
        fn(data)
        times.append(time.perf_counter() - began)
    return statistics.median(times)


def pdf_pages(data: bytes) -> int:
    from pypdf import PdfReader

    return len(PdfReader(io.BytesIO(data)).pages)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=10, help="copies of the report's blocks in each file")
    parser.add_argument("--rounds", type=int, default=3, help="timings per measure (median)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        files = write_corpus(Path(tmp), args.repeat)
        data = {fmt: path.read_bytes() for fmt, path in files.items()}
        pages = pdf_pages(data["pdf"])
        print(f"report x{args.repeat}: " + ", ".join(f"{fmt} {len(b) / 1024:.0f} KB" for fmt, b in data.items()))
        print(f"pdf: {pages} pages\n")
        print("| format | before MB/s | after MB/s | before paragraphs / furniture | after paragraphs / furniture |")
        print("|---|---|---|---|---|")
        for fmt, raw in data.items():
            before, after = (
                best_time(OLD[fmt], raw, args.rounds),
                best_time(lambda b, f=fmt: extract(f".{f}", b), raw, args.rounds),
            )
            mb = len(raw) / 1048576
            old_fid, new_fid = fidelity(OLD[fmt](raw)), fidelity(extract(f".{fmt}", raw).text)
            extra = f" ({pages / before:.0f} -> {pages / after:.0f} pages/s)" if fmt == "pdf" else ""
            print(
                f"| {fmt}{extra} | {mb / before:.2f} | {mb / after:.2f} | {old_fid[0]:.2f} / {old_fid[1]:.2f} | "
                f"{new_fid[0]:.2f} / {new_fid[1]:.2f} |"
            )
        print("\n| PDF library | pages/s | paragraphs verbatim | furniture kept |")
        print("|---|---|---|---|")
        for name, fn in PDF_LIBRARIES.items():
            try:
                seconds = best_time(fn, data["pdf"], args.rounds)
            except ImportError as exc:
                print(f"| {name} | not installed ({exc.name}) | | |")
                continue
            found, furniture = fidelity(fn(data["pdf"]))
            print(f"| {name} | {pages / seconds:.0f} | {found:.2f} | {furniture:.2f} |")


if __name__ == "__main__":
    main()
