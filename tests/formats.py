"""Writers for sample documents in every supported format (used by several test modules)."""

from __future__ import annotations

from pathlib import Path

PARAGRAPHS = [
    "Organised crime groups moved “£3 million” through crypto-asset exchanges — the NCA said.",
    "• Fraud is over 40% of crime. Mr. Biggar warned about deepfakes.",
    "Café owners in Zürich reported extortion; naïve victims lost €500 each.",
]


def write_txt(folder: Path) -> Path:
    path = folder / "notes.txt"
    path.write_text("date 2024-02-01\n\n" + "\n\n".join(PARAGRAPHS) + "\n", encoding="utf-8")
    return path


def write_md(folder: Path) -> Path:
    path = folder / "brief.md"
    path.write_text("# Threat brief\n\n" + "\n\n".join(PARAGRAPHS) + "\n", encoding="utf-8")
    return path


def write_html(folder: Path) -> Path:
    path = folder / "page.html"
    body = "".join(f"<p>{p.replace('&', '&amp;')}</p>" for p in PARAGRAPHS)
    path.write_text(
        f"<html><head><title>Web report</title><meta name='date' content='2024-03-05'>"
        f"<script>var hidden = 'script text';</script></head><body><h1>Heading</h1>{body}</body></html>",
        encoding="utf-8",
    )
    return path


def write_pdf(folder: Path) -> Path:
    from reportlab.lib.pagesizes import A4
    from reportlab.pdfbase import pdfmetrics
    from reportlab.pdfgen import canvas

    path = folder / "report.pdf"
    pdf = canvas.Canvas(str(path), pagesize=A4)
    pdf.setTitle("PDF report")
    for number, text in enumerate(["Page one says cocaine use is rising.", "Page two covers firearms."], 1):
        pdf.setFont("Helvetica", 12)
        assert pdfmetrics.stringWidth(text, "Helvetica", 12) < 500
        pdf.drawString(72, 750, text)
        pdf.drawString(72, 730, f"End of page {number}.")
        pdf.showPage()
    pdf.save()
    return path


def write_docx(folder: Path) -> Path:
    import docx

    path = folder / "memo.docx"
    document = docx.Document()
    document.core_properties.title = "Word memo"
    for paragraph in PARAGRAPHS:
        document.add_paragraph(paragraph)
    document.save(str(path))
    return path


WRITERS = {"txt": write_txt, "md": write_md, "html": write_html, "pdf": write_pdf, "docx": write_docx}
