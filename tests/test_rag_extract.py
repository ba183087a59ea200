"""Extraction on real parsers: a PDF built here, a real multi-page PDF a package ships,
HTML with navigation noise, nested Markdown, sniffing and per-document errors."""

from __future__ import annotations

import io
import re
import zipfile
from pathlib import Path

import pytest

from loomwork.rag.extract import DocumentUnreadable, extract, sniff_format
from loomwork.rag.models import DocumentFormat

# A 17-page specification as the Debian package `shared-mime-info` ships it (see data/README.md).
SHIPPED_PDF = Path(__file__).parent / "data" / "shared-mime-info-spec.pdf"


def minimal_pdf(pages: list[str], *, title: str = "") -> bytes:
    """A valid PDF with one line of Helvetica text per page (correct xref offsets)."""
    objects: list[bytes] = []
    kids = " ".join(f"{3 + 2 * i} 0 R" for i in range(len(pages)))
    objects.append(b"<< /Type /Catalog /Pages 2 0 R >>")
    objects.append(f"<< /Type /Pages /Kids [{kids}] /Count {len(pages)} >>".encode())
    font_ref = 3 + 2 * len(pages)
    for i, text in enumerate(pages):
        content = f"BT /F1 12 Tf 72 720 Td ({text}) Tj ET".encode()
        objects.append(
            f"<< /Type /Page /Parent 2 0 R /MediaBox [0 0 612 792] /Contents {4 + 2 * i} 0 R"
            f" /Resources << /Font << /F1 {font_ref} 0 R >> >> >>".encode()
        )
        objects.append(
            b"<< /Length "
            + str(len(content)).encode()
            + b" >>\nstream\n"
            + content
            + b"\nendstream"
        )
    objects.append(b"<< /Type /Font /Subtype /Type1 /BaseFont /Helvetica >>")
    info = None
    if title:
        objects.append(f"<< /Title ({title}) >>".encode())
        info = len(objects)
    out = bytearray(b"%PDF-1.4\n")
    offsets = []
    for number, body in enumerate(objects, start=1):
        offsets.append(len(out))
        out += f"{number} 0 obj\n".encode() + body + b"\nendobj\n"
    xref = len(out)
    out += f"xref\n0 {len(objects) + 1}\n0000000000 65535 f \n".encode()
    for offset in offsets:
        out += f"{offset:010d} 00000 n \n".encode()
    trailer = f"/Size {len(objects) + 1} /Root 1 0 R" + (f" /Info {info} 0 R" if info else "")
    out += f"trailer\n<< {trailer} >>\nstartxref\n{xref}\n%%EOF\n".encode()
    return bytes(out)


def test_built_pdf_keeps_pages_and_title() -> None:
    data = minimal_pdf(
        ["Alpha beta gamma on page one.", "Delta epsilon on page two."], title="Greek letters"
    )
    assert sniff_format(data) is DocumentFormat.PDF
    doc = extract(data, DocumentFormat.UNSPECIFIED)
    assert doc.page_count == 2 and doc.title == "Greek letters"
    assert [s.page for s in doc.sections] == [1, 2]
    assert doc.sections[0].text.strip() == "Alpha beta gamma on page one."
    assert doc.sections[1].text.strip() == "Delta epsilon on page two."


def test_real_multi_page_pdf_keeps_words_apart() -> None:
    doc = extract(SHIPPED_PDF.read_bytes(), DocumentFormat.UNSPECIFIED, "spec.pdf")
    assert doc.page_count == 17
    pages = {s.page for s in doc.sections}
    assert len(pages) >= 15 and max(pages) <= 17
    text = doc.text
    # Words come out separated: these phrases exist in the spec with their spaces.
    assert "Shared MIME-info Database" in text
    assert "The key words" in text
    words = re.findall(r"[A-Za-z]+", text)
    # Glued words would show up as very long "words"; real English text has almost none.
    assert sum(len(w) > 20 for w in words) < len(words) / 500


def test_corrupt_and_encrypted_pdf_are_clear_errors() -> None:
    with pytest.raises(DocumentUnreadable) as corrupt:
        extract(b"%PDF-1.4\nnot really a pdf", DocumentFormat.UNSPECIFIED)
    assert corrupt.value.reason == "DOCUMENT_CORRUPT"
    truncated = minimal_pdf(["text"])[:60]
    with pytest.raises(DocumentUnreadable):
        extract(truncated, DocumentFormat.PDF)


def test_encrypted_pdf() -> None:
    # pdfium cannot write encrypted files; build one by declaring an /Encrypt dictionary.
    plain = minimal_pdf(["secret"])
    encrypted = plain.replace(
        b"/Root 1 0 R",
        b"/Root 1 0 R /Encrypt << /Filter /Standard /V 1 /R 2 /O (0123456789abcdef0123456789abcdef)"
        b" /U (0123456789abcdef0123456789abcdef) /P -4 >> /ID [<00112233445566778899aabbccddeeff>"
        b" <00112233445566778899aabbccddeeff>]",
    )
    with pytest.raises(DocumentUnreadable) as error:
        extract(encrypted, DocumentFormat.UNSPECIFIED)
    assert error.value.reason == "DOCUMENT_ENCRYPTED"


HTML = b"""<!DOCTYPE html><html><head><title>Install guide</title>
<style>body { color: red }</style><script>trackVisitor('secret-tracker')</script></head>
<body><header><a href="/">Home</a> | <a href="/about">About us</a></header>
<nav><ul><li>Menu item one</li><li>Menu item two</li></ul></nav>
<main><h1>Install</h1><p>Run <b>pip</b> install loomwork.</p>
<h2>On Linux</h2><p>Use the <em>embedded</em> stack.</p><aside>Related: ads</aside>
<h2>On macOS</h2><p>Same as Linux.</p></main>
<footer>Copyright 2026 Example Corp</footer></body></html>"""


def test_html_main_text_without_noise_and_with_headings() -> None:
    doc = extract(HTML, DocumentFormat.UNSPECIFIED)
    assert doc.format is DocumentFormat.HTML and doc.title == "Install guide"
    text = doc.text
    for noise in ("secret-tracker", "Menu item", "About us", "Copyright", "color: red", "ads"):
        assert noise not in text
    assert "Run pip install loomwork." in text
    assert "Use the embedded stack." in text
    paths = [s.heading_path for s in doc.sections]
    assert paths == [["Install"], ["Install", "On Linux"], ["Install", "On macOS"]]


# From the PostgreSQL 15 documentation (bench/data/postgres-docs/html/app-pgdump.html, PostgreSQL
# Licence), trimmed: a note box inside one option's description, the next option after it.
PG_DUMP_OPTIONS = """<!DOCTYPE html><html><head><title>pg_dump</title></head><body>
<div class="refentry"><div class="refnamediv"><h2>pg_dump</h2><p>pg_dump — extract a
PostgreSQL database into a script file or other archive file</p></div>
<div class="refsect1" id="PG-DUMP-OPTIONS"><div class="titlepage"><h2>Options</h2></div><p>
The following command-line options control the content and format of the output.</p>
<div class="variablelist"><dl class="variablelist">
<dt><span class="term"><code class="option">-e pattern</code></span></dt><dd><p>
Dump only extensions matching pattern.</p><div class="note"><h3 class="title">Note</h3><p>
When <code class="option">-e</code> is specified, pg_dump makes no attempt to dump any other
database objects that the selected extension(s) might depend upon.</p></div></dd>
<dt><span class="term"><code class="option">-E encoding</code></span></dt><dd><p>
Create the dump in the specified character set encoding.</p></dd></dl></div></div>
<div class="refsect1"><h2>Environment</h2><p>PGDATABASE</p></div></div></body></html>""".encode()


def test_html_heading_ends_with_the_box_that_holds_it() -> None:
    """A note box's heading labels the note, not the options after it; a heading wrapped
    alone in a title div labels what follows the div."""
    doc = extract(PG_DUMP_OPTIONS, DocumentFormat.UNSPECIFIED)
    by_text = {
        phrase: next(s.heading_path for s in doc.sections if phrase in " ".join(s.text.split()))
        for phrase in (
            "control the content and format",
            "Dump only extensions",
            "makes no attempt to dump",
            "specified character set encoding",
            "PGDATABASE",
        )
    }
    assert by_text == {
        "control the content and format": ["Options"],
        "Dump only extensions": ["Options"],
        "makes no attempt to dump": ["Options", "Note"],
        "specified character set encoding": ["Options"],
        "PGDATABASE": ["Environment"],
    }


MARKDOWN = """# Guide

Intro text.

## Setup

### Linux

Run the thing.

```python
# not a heading
print("hi")
```

## Usage

Use it.
"""


def test_markdown_heading_paths_ignore_code() -> None:
    doc = extract(MARKDOWN.encode(), DocumentFormat.UNSPECIFIED, "guide.md")
    assert doc.format is DocumentFormat.MARKDOWN and doc.title == "Guide"
    paths = [s.heading_path for s in doc.sections]
    assert paths == [["Guide"], ["Guide", "Setup"], ["Guide", "Setup", "Linux"], ["Guide", "Usage"]]
    linux = doc.sections[2].text
    assert "# not a heading" in linux and 'print("hi")' in linux


def test_sniffing() -> None:
    assert sniff_format(b"just some words") is DocumentFormat.PLAIN_TEXT
    assert sniff_format(b"# Title\n\ntext") is DocumentFormat.MARKDOWN
    assert sniff_format(b"plain", "notes.md") is DocumentFormat.MARKDOWN
    assert sniff_format(b"  <html><body>x</body></html>") is DocumentFormat.HTML
    with pytest.raises(DocumentUnreadable) as error:
        sniff_format(bytes(range(256)))
    assert error.value.reason == "UNSUPPORTED_FORMAT"
    with pytest.raises(DocumentUnreadable) as bad:
        extract(b"\xff\xfe bad utf8", DocumentFormat.PLAIN_TEXT)
    assert bad.value.reason == "DOCUMENT_CORRUPT"


def built_docx(*, title: str = "Field manual") -> bytes:
    """A DOCX written by python-docx: a title, headings, paragraphs and a table, in order."""
    import docx

    document = docx.Document()
    document.core_properties.title = title
    document.add_heading("Pumps", level=1)
    document.add_paragraph("Prime the pump before the first start.")
    table = document.add_table(rows=2, cols=3)
    rows = [("model", "flow", "head"), ("P-20", "20 l/min", "8 m")]
    for row, values in zip(table.rows, rows, strict=True):
        for cell, value in zip(row.cells, values, strict=True):
            cell.text = value
    document.add_heading("Seals", level=2)
    document.add_paragraph("Replace the shaft seal every 4000 hours.")
    document.add_heading("Valves", level=1)
    document.add_paragraph("Close the inlet valve before opening the housing.")
    out = io.BytesIO()
    document.save(out)
    return out.getvalue()


def test_docx_paragraphs_headings_and_tables_in_order() -> None:
    doc = extract(built_docx(), DocumentFormat.UNSPECIFIED, "manual.docx")
    assert doc.format is DocumentFormat.DOCX and doc.title == "Field manual"
    assert [s.heading_path for s in doc.sections] == [
        ["Pumps"],
        ["Pumps", "Seals"],
        ["Valves"],
    ]
    pumps = doc.sections[0].text
    assert pumps.index("Prime the pump") < pumps.index("model | flow | head")
    assert "P-20 | 20 l/min | 8 m" in pumps
    assert doc.sections[1].text == "Seals\n\nReplace the shaft seal every 4000 hours.\n\n"


def test_docx_sniffing_and_corrupt_docx() -> None:
    assert sniff_format(built_docx()) is DocumentFormat.DOCX  # by content, no file name
    with pytest.raises(DocumentUnreadable) as corrupt:
        extract(b"PK\x03\x04 truncated archive", DocumentFormat.UNSPECIFIED, "report.docx")
    assert corrupt.value.reason == "DOCUMENT_CORRUPT"
    archive = io.BytesIO()
    with zipfile.ZipFile(archive, "w") as other:
        other.writestr("photo.raw", bytes(range(256)))
    with pytest.raises(DocumentUnreadable) as other_zip:
        sniff_format(archive.getvalue(), "photos.zip")
    assert other_zip.value.reason == "UNSUPPORTED_FORMAT"
