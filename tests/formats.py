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
        f"<html><head><title>Web report - Example site</title><meta name='date' content='2024-03-05'>"
        f"<script>var hidden = 'script text';</script></head><body><h1>Web report</h1>{body}</body></html>",
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


# One report in five formats (issue 15's must-show corpus): the same title, date, headings and
# paragraphs as txt, md (front matter, markup), html (nav, cookie banner, script, footer), pdf
# (several pages, running header, page numbers, hyphenated line ends) and docx (Title style).
REPORT_TITLE = "National Strategic Assessment of Serious and Organised Crime 2023"
REPORT_DATE = "2023-07-17"
REPORT_DATELINE = "17 July 2023"
REPORT_BLOCKS: list[tuple[str, str]] = [  # (kind, text): kind is "h" for a heading, "p" for a paragraph
    ("p", "Serious and organised crime kills more people in the United Kingdom every year than terrorism, war "
          "and natural disasters combined. This assessment sets out the threats the National Crime Agency and "
          "its partners face, and how they are changing."),
    ("h", "Major threats"),
    ("p", "Hostile states are using organised crime groups to carry out illegal activities in the United "
          "Kingdom. Russia has long tolerated cybercriminal groups on its territory, and North Korea has used "
          "cybercrime to steal funds and cryptocurrencies for some time."),
    ("p", "Fraud is the most common crime in England and Wales: it accounts for more than 40 per cent of all "
          "crime, and most of it is organised, enabled by technology and committed from overseas against "
          "victims who are increasingly targeted through their telephones and computers."),
    ("h", "Drugs and firearms"),
    ("p", "Around 117 tonnes of cocaine are consumed in the United Kingdom every year, and the market is "
          "characterised by high purity and low prices. Synthetic opioids such as nitazenes have been linked "
          "to a growing number of deaths, and the agency expects the threat to increase."),
    ("p", "Firearms seized in the United Kingdom are increasingly converted or homemade, including weapons "
          "printed on three-dimensional printers, and criminals continue to reactivate antique and "
          "deactivated guns bought from collectors and dealers abroad."),
    ("h", "Money laundering"),
    ("p", "Money laundering through professional enablers remains a significant threat: accountants, "
          "solicitors and company formation agents knowingly or unwittingly help criminals to move an "
          "estimated £12 billion of criminal cash through the economy every year."),
    ("p", "Criminals increasingly use crypto-assets alongside cash, moving value across borders quickly and "
          "cheaply; the agency works with exchanges and international partners to trace and recover the "
          "proceeds of crime wherever they are hidden."),
    ("h", "Exploitation"),
    ("p", "Child sexual abuse is among the most harmful threats: an estimated 680,000 to 830,000 adults in "
          "the United Kingdom pose some degree of sexual risk to children, and offenders increasingly use "
          "encrypted platforms to share material and to groom victims."),
    ("p", "Organised immigration crime and modern slavery exploit vulnerable people who are transported in "
          "dangerous conditions, and the number of small boat crossings of the Channel has risen sharply "
          "since the networks behind them adopted larger and less seaworthy vessels."),
    ("h", "Our response"),
    ("p", "The agency will lead the national response with its partners in policing, government and the "
          "private sector, pursuing the highest harm offenders, disrupting their networks and protecting "
          "the public, businesses and institutions of the United Kingdom from their crimes."),
]  # fmt: skip
REPORT_FURNITURE = ["Skip to content", "cookies", "Accept all", "Privacy notice", "tracker", "OFFICIAL", "Page 2"]


def report_text_blocks() -> list[str]:
    """Title, dateline and every heading and paragraph, as plain text, in reading order."""
    return [REPORT_TITLE, REPORT_DATELINE, *(text for _, text in REPORT_BLOCKS)]


def write_report_txt(folder: Path) -> Path:
    path = folder / "assessment.txt"
    blocks = [REPORT_TITLE, f"date {REPORT_DATE}", *(text for _, text in REPORT_BLOCKS)]
    path.write_text("\n\n".join(blocks) + "\n", encoding="utf-8")
    return path


def _markdown_paragraph(text: str) -> str:
    """Some markup inside the paragraph: emphasis, strong and a link, which display drops."""
    text = text.replace("organised crime groups", "**organised crime groups**", 1)
    text = text.replace("most common crime", "*most common crime*", 1)
    return text.replace("National Crime Agency", "[National Crime Agency](https://www.nationalcrimeagency.gov.uk)", 1)


def write_report_md(folder: Path) -> Path:
    path = folder / "assessment.md"
    blocks = [f"# {REPORT_TITLE}", f"_{REPORT_DATELINE}_"]
    blocks += [f"## {text}" if kind == "h" else _markdown_paragraph(text) for kind, text in REPORT_BLOCKS]
    front = f"---\ntitle: {REPORT_TITLE}\ndate: {REPORT_DATE}\nlayout: report\n---\n\n"
    path.write_text(front + "\n\n".join(blocks) + "\n", encoding="utf-8")
    return path


def write_report_html(folder: Path) -> Path:
    from html import escape

    path = folder / "assessment.html"
    body = "".join(
        f"<h2>{escape(text)}</h2>\n" if kind == "h" else f"<p>{escape(text)}</p>\n" for kind, text in REPORT_BLOCKS
    )
    path.write_text(
        f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>{escape(REPORT_TITLE)}</title>
<meta name="generator" content="SiteBuilder 9"><script>var tracker = "tracker script text";</script>
<style>body {{ font-family: sans-serif }}</style></head>
<body>
<div id="cookie-banner" class="cookie-banner">We use cookies to improve the site. <button>Accept all</button></div>
<a href="#main">Skip to content</a>
<header><nav><ul><li><a href="/">Home</a></li><li><a href="/news">News</a></li>
<li><a href="/about">About the agency</a></li></ul></nav></header>
<main id="main"><article>
<h1>{escape(REPORT_TITLE)}</h1>
<p><time datetime="{REPORT_DATE}">{REPORT_DATELINE}</time></p>
{body}</article></main>
<footer><p>Privacy notice · Accessibility · © Crown copyright 2023</p>
<nav><a href="/contact">Contact</a></nav></footer>
<script>document.write("tracker injected text");</script>
</body></html>
""",
        encoding="utf-8",
    )
    return path


def _pdf_lines(text: str, font: str, size: float, width: float) -> list[str]:
    """Greedy line wrap; a long word that does not fit is hyphenated, as typesetting does."""
    from reportlab.pdfbase.pdfmetrics import stringWidth

    lines: list[str] = []
    line = ""
    for word in text.split():
        if stringWidth(f"{line} {word}".strip(), font, size) <= width:
            line = f"{line} {word}".strip()
            continue
        if len(word) >= 9 and word.isalpha():
            cut = max(
                (c for c in range(4, len(word) - 3) if stringWidth(f"{line} {word[:c]}-".strip(), font, size) <= width),
                default=0,
            )
            if cut:
                lines.append(f"{line} {word[:cut]}-".strip())
                line = word[cut:]
                continue
        lines.append(line)
        line = word
    return [*lines, line] if line else lines


def write_report_pdf(folder: Path) -> Path:
    """A5 pages with a running header, a page number in the footer, a title page block, headings in
    bold and justified-looking body lines that break words with hyphens."""
    from reportlab.lib.pagesizes import A5
    from reportlab.pdfgen import canvas

    path = folder / "assessment.pdf"
    width, height = A5
    margin, top, bottom = 50.0, height - 70, 110.0
    pdf = canvas.Canvas(str(path), pagesize=A5, invariant=True)
    pdf.setTitle("Microsoft Word - NSA_final_v3.docx")  # a typical, unhelpful metadata title
    state = {"page": 1, "y": top}

    def furniture() -> None:
        pdf.setFont("Helvetica", 8)
        pdf.drawString(margin, height - 35, "OFFICIAL - National Strategic Assessment 2023")
        pdf.drawCentredString(width / 2, 35, f"Page {state['page']}")

    def line(text: str, font: str, size: float, leading: float) -> None:
        if state["y"] < bottom:
            furniture()
            pdf.showPage()
            state["page"] += 1
            state["y"] = top
        pdf.setFont(font, size)
        pdf.drawString(margin, state["y"], text)
        state["y"] -= leading

    line(REPORT_TITLE[:40].rsplit(" ", 1)[0], "Helvetica-Bold", 16, 20)
    line(REPORT_TITLE[len(REPORT_TITLE[:40].rsplit(" ", 1)[0]) + 1 :], "Helvetica-Bold", 16, 26)
    line(REPORT_DATELINE, "Helvetica", 11, 28)
    for kind, text in REPORT_BLOCKS:
        font, size, leading = ("Helvetica-Bold", 13, 18) if kind == "h" else ("Helvetica", 11, 15)
        if kind == "h":
            state["y"] -= 6
        for part in _pdf_lines(text, font, size, width - 2 * margin):
            line(part, font, size, leading)
        state["y"] -= 8
    furniture()
    pdf.showPage()
    pdf.save()
    return path


def write_report_docx(folder: Path) -> Path:
    import docx

    path = folder / "assessment.docx"
    document = docx.Document()  # python-docx's template: core properties dated 2013-12-23, a template default
    document.add_paragraph(REPORT_TITLE, style="Title")
    document.add_paragraph(REPORT_DATELINE)
    for kind, text in REPORT_BLOCKS:
        if kind == "h":
            document.add_heading(text, level=2)
        else:
            document.add_paragraph(text)
    section = document.sections[0]
    section.header.paragraphs[0].text = "OFFICIAL - National Strategic Assessment 2023"
    section.footer.paragraphs[0].text = "Privacy notice"
    document.save(str(path))
    return path


REPORT_WRITERS = {
    "txt": write_report_txt,
    "md": write_report_md,
    "html": write_report_html,
    "pdf": write_report_pdf,
    "docx": write_report_docx,
}
