"""Text extraction that keeps structure: PDF pages, HTML main text, Markdown and DOCX headings.

PDF goes through pypdfium2 (keeps the spaces between words, fast), HTML through
selectolax (scripts, styles, navigation, headers and footers removed), Markdown
through markdown-it-py (heading paths), DOCX through python-docx (paragraphs and
tables in order, heading styles as heading paths). A document that cannot be read
raises `DocumentUnreadable` with a stable reason; the caller fails that document alone.
"""

from __future__ import annotations

import io
import re
import zipfile
from pathlib import PurePath
from typing import Any

from loomwork.rag.models import DocumentFormat, ExtractedDocument, Section

__all__ = ["DocumentUnreadable", "extract", "sniff_format"]

# google.rpc codes used in document errors
INVALID_ARGUMENT = 3
FAILED_PRECONDITION = 9


class DocumentUnreadable(Exception):
    """A document whose text cannot be extracted (reason: DOCUMENT_CORRUPT, ...)."""

    def __init__(self, reason: str, message: str, code: int = INVALID_ARGUMENT) -> None:
        super().__init__(message)
        self.reason = reason
        self.message = message
        self.code = code


_EXTENSIONS = {
    ".pdf": DocumentFormat.PDF,
    ".docx": DocumentFormat.DOCX,
    ".html": DocumentFormat.HTML,
    ".htm": DocumentFormat.HTML,
    ".xhtml": DocumentFormat.HTML,
    ".md": DocumentFormat.MARKDOWN,
    ".markdown": DocumentFormat.MARKDOWN,
    ".txt": DocumentFormat.PLAIN_TEXT,
    ".text": DocumentFormat.PLAIN_TEXT,
}
_HTML_START = re.compile(rb"^\s*(<!doctype\s+html|<html|<head|<body|<\?xml[^>]*>\s*<html)", re.I)
_MD_HINT = re.compile(r"^(#{1,6} \S|```|\* \S|- \S|\d+\. \S|> \S)", re.M)


def sniff_format(data: bytes, file_name: str = "") -> DocumentFormat:
    """The format from magic bytes and markup, then the file extension, else plain text.

    Raises DocumentUnreadable(UNSUPPORTED_FORMAT) for binary data that is none of these.
    """
    head = data[:1024]
    if head.lstrip().startswith(b"%PDF-"):
        return DocumentFormat.PDF
    if _HTML_START.match(head):
        return DocumentFormat.HTML
    by_extension = _EXTENSIONS.get(PurePath(file_name).suffix.lower()) if file_name else None
    if head.startswith(b"PK\x03\x04") and _is_docx(data):
        return DocumentFormat.DOCX
    if by_extension in (DocumentFormat.PDF, DocumentFormat.DOCX):
        return by_extension  # a .pdf or .docx that is none: let its reader say it is corrupt
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise DocumentUnreadable(
            "UNSUPPORTED_FORMAT",
            "the content is not PDF, DOCX, HTML, Markdown or UTF-8 text",
        ) from exc
    if by_extension is not None:
        return by_extension
    if _MD_HINT.search(text[:20000]):
        return DocumentFormat.MARKDOWN
    return DocumentFormat.PLAIN_TEXT


def extract(data: bytes, fmt: DocumentFormat, file_name: str = "") -> ExtractedDocument:
    """Extract `data` (format given, or UNSPECIFIED to sniff)."""
    if fmt is DocumentFormat.UNSPECIFIED:
        fmt = sniff_format(data, file_name)
    if fmt is DocumentFormat.PDF:
        return _pdf(data)
    if fmt is DocumentFormat.DOCX:
        return _docx(data)
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise DocumentUnreadable(
            "DOCUMENT_CORRUPT", f"the content is not valid UTF-8 ({exc.reason})"
        ) from exc
    if fmt is DocumentFormat.HTML:
        return _html(text)
    if fmt is DocumentFormat.MARKDOWN:
        return _markdown(text)
    return ExtractedDocument(
        format=DocumentFormat.PLAIN_TEXT, sections=[Section(text=_normalize(text))]
    )


def _normalize(text: str) -> str:
    text = text.replace("\r\n", "\n").replace("\r", "\n").replace("\x00", "")
    return re.sub(r"[ \t]+\n", "\n", text)


# ----------------------------------------------------------------------------- PDF


def _pdf(data: bytes) -> ExtractedDocument:
    import pypdfium2 as pdfium

    try:
        document = pdfium.PdfDocument(data)
    except pdfium.PdfiumError as exc:
        message = str(exc)
        if "password" in message.lower():
            raise DocumentUnreadable(
                "DOCUMENT_ENCRYPTED",
                "the PDF is encrypted with a password; send it decrypted",
                FAILED_PRECONDITION,
            ) from exc
        raise DocumentUnreadable("DOCUMENT_CORRUPT", f"the PDF cannot be read: {message}") from exc
    try:
        title = ""
        try:
            title = str(document.get_metadata_dict().get("Title") or "").strip()
        except Exception:  # metadata is optional decoration
            title = ""
        sections: list[Section] = []
        for number in range(len(document)):
            page = document[number]
            textpage = page.get_textpage()
            try:
                text = textpage.get_text_range()
            finally:
                textpage.close()
                page.close()
            text = _normalize(text).replace("\ufffe", "")  # soft-hyphen marker of pdfium
            text = text.strip("\n")
            if text:
                sections.append(Section(text=text + "\n\n", page=number + 1))
        return ExtractedDocument(
            format=DocumentFormat.PDF, title=title, page_count=len(document), sections=sections
        )
    except pdfium.PdfiumError as exc:
        raise DocumentUnreadable("DOCUMENT_CORRUPT", f"the PDF cannot be read: {exc}") from exc
    finally:
        document.close()


# ----------------------------------------------------------------------------- DOCX


def _is_docx(data: bytes) -> bool:
    """A ZIP archive holding a Word main document part."""
    try:
        with zipfile.ZipFile(io.BytesIO(data)) as archive:
            return "word/document.xml" in archive.namelist()
    except (zipfile.BadZipFile, OSError, ValueError):
        return False


_DOCX_HEADING = re.compile(r"^heading (\d)$")


def _docx(data: bytes) -> ExtractedDocument:
    import docx
    from docx.table import Table

    try:
        document = docx.Document(io.BytesIO(data))
    except Exception as exc:  # a ZIP or XML error of any kind: the file is not a readable DOCX
        raise DocumentUnreadable(
            "DOCUMENT_CORRUPT", f"the DOCX cannot be read: {exc or type(exc).__name__}"
        ) from exc
    title = (document.core_properties.title or "").strip()
    sections: list[Section] = []
    path: list[tuple[int, str]] = []
    buffer: list[str] = []

    def flush() -> None:
        joined = re.sub(r"\n{3,}", "\n\n", "".join(buffer)).strip()
        buffer.clear()
        if joined:
            sections.append(Section(text=joined + "\n\n", heading_path=[h for _, h in path]))

    try:
        for block in document.iter_inner_content():
            if isinstance(block, Table):
                buffer.append(_docx_table(block) + "\n\n")
                continue
            text = _normalize(block.text).strip()
            style = (block.style.name if block.style is not None else "") or ""
            level = 0 if style.lower() == "title" else None
            match = _DOCX_HEADING.match(style.lower())
            if match:
                level = int(match.group(1))
            if level is None or not text:
                if text:
                    buffer.append(text + "\n\n")
                continue
            flush()
            while path and path[-1][0] >= level:
                path.pop()
            path.append((level, text))
            if not title:
                title = text
            buffer.append(text + "\n\n")
    except Exception as exc:  # malformed parts inside a valid archive
        raise DocumentUnreadable("DOCUMENT_CORRUPT", f"the DOCX cannot be read: {exc}") from exc
    flush()
    return ExtractedDocument(format=DocumentFormat.DOCX, title=title, sections=sections)


def _docx_table(table: Any) -> str:
    """A table as text: one line per row, cells separated by ` | ` (merged cells once)."""
    lines = []
    for row in table.rows:
        cells: list[str] = []
        seen: set[int] = set()
        for cell in row.cells:
            if id(cell._tc) in seen:  # a merged cell is repeated once per grid column
                continue
            seen.add(id(cell._tc))
            cells.append(" ".join(_normalize(cell.text).split()))
        if any(cells):
            lines.append(" | ".join(cells))
    return "\n".join(lines)


# ----------------------------------------------------------------------------- HTML

_DROP = "script, style, noscript, template, nav, header, footer, aside, form, iframe, svg"
_BLOCKS = {
    "p", "div", "section", "article", "main", "li", "ul", "ol", "table", "tr", "td", "th",
    "pre", "blockquote", "br", "dd", "dt", "dl", "figcaption", "hr",
}  # fmt: skip
_HEADINGS = {"h1": 1, "h2": 2, "h3": 3, "h4": 4, "h5": 5, "h6": 6}


def _html(text: str) -> ExtractedDocument:
    from selectolax.lexbor import LexborHTMLParser as HTMLParser
    from selectolax.lexbor import LexborNode as Node

    tree = HTMLParser(text)
    title_node = tree.css_first("title")
    title = title_node.text(strip=True) if title_node is not None else ""
    for node in tree.css(_DROP):
        node.decompose()
    for node in tree.css('[role="navigation"], [aria-hidden="true"], [hidden]'):
        node.decompose()
    root = tree.css_first("main") or tree.css_first("article") or tree.body or tree.root
    sections: list[Section] = []
    # (level, heading, body characters seen when it was pushed)
    path: list[tuple[int, str, int]] = []
    buffer: list[str] = []
    body = [0]  # characters of non-heading text seen so far

    def flush() -> None:
        joined = re.sub(r"[ \t]*\n[ \t]*", "\n", "".join(buffer))
        joined = re.sub(r"[ \t]+", " ", joined)
        joined = re.sub(r"\n{3,}", "\n\n", joined).strip()
        buffer.clear()
        if joined:
            sections.append(Section(text=joined + "\n\n", heading_path=[h for _, h, _ in path]))

    def walk(node: Node) -> None:
        for child in node.iter(include_text=True):
            tag = child.tag
            if tag == "-text":
                text = re.sub(r"\s+", " ", child.text_content or "")
                buffer.append(text)
                body[0] += len(text.strip())
            elif tag in _HEADINGS:
                flush()
                level = _HEADINGS[tag]
                heading = child.text(separator=" ", strip=True)
                while path and path[-1][0] >= level:
                    path.pop()
                if heading:
                    path.append((level, heading, body[0]))
                    buffer.append(heading + "\n\n")
            elif tag in ("-comment",):
                continue
            else:
                block = tag in _BLOCKS
                if block:
                    buffer.append("\n")
                outer = list(path)
                walk(child)
                if block:
                    buffer.append("\n")
                # A heading ends with the element that holds it and its text (a note box,
                # a <section>): the path outside it comes back. One wrapped alone (a title
                # div) goes on after it.
                pushed = [seen for entry in path if entry not in outer for seen in entry[2:]]
                if pushed and body[0] > min(pushed):
                    flush()
                    path[:] = outer

    if root is not None:
        walk(root)
    flush()
    return ExtractedDocument(format=DocumentFormat.HTML, title=title, sections=sections)


# ----------------------------------------------------------------------------- Markdown


def _markdown(text: str) -> ExtractedDocument:
    from markdown_it import MarkdownIt

    text = _normalize(text)
    lines = text.split("\n")
    tokens = MarkdownIt("commonmark").parse(text)
    # (first line, level, heading text) of every heading, from the parser (not regexes,
    # so `# comments` inside code blocks are not headings).
    headings: list[tuple[int, int, int, str]] = []
    for i, token in enumerate(tokens):
        if token.type == "heading_open" and token.map is not None:
            inline = tokens[i + 1]
            headings.append((token.map[0], token.map[1], int(token.tag[1]), inline.content.strip()))
    sections: list[Section] = []
    path: list[tuple[int, str]] = []
    start = 0
    title = ""

    def emit(begin: int, end: int) -> None:
        body = "\n".join(lines[begin:end]).strip("\n")
        if body.strip():
            sections.append(Section(text=body + "\n\n", heading_path=[h for _, h in path]))

    for first, _last, level, heading in headings:
        emit(start, first)
        while path and path[-1][0] >= level:
            path.pop()
        path.append((level, heading))
        if not title:
            title = heading
        start = first
    emit(start, len(lines))
    return ExtractedDocument(format=DocumentFormat.MARKDOWN, title=title, sections=sections)
