"""Context assembly for answers: dedupe, trim to a token budget, order, number for citations.

Pure (no I/O). Chunks are deduplicated by id, and a chunk whose text overlaps its
neighbour in the same document (chunking overlap) keeps only its new text. Trimming
drops the lowest-scored chunks first; the order is then by score or by document
position (documents in order of their best chunk). Citation `[n]` is the n-th chunk.
"""

from __future__ import annotations

from enum import StrEnum

from pydantic import BaseModel, Field

from loomwork.memory.tokens import count_text_tokens
from loomwork.rag.models import ScoredChunk

__all__ = ["AssembledRagContext", "ContextOrder", "assemble_rag_context", "render_context"]


class ContextOrder(StrEnum):
    SCORE = "score"
    POSITION = "position"


class AssembledRagContext(BaseModel):
    chunks: list[ScoredChunk] = Field(default_factory=list)
    retrieved_count: int = 0
    context_tokens: int = 0


def _block(number: int, chunk: ScoredChunk) -> str:
    where = chunk.title
    if chunk.chunk.page:
        where += f", page {chunk.chunk.page}"
    if chunk.chunk.heading_path:
        where += f", {' > '.join(chunk.chunk.heading_path)}"
    return f"[{number}] ({where})\n{chunk.chunk.text}"


def render_context(chunks: list[ScoredChunk]) -> str:
    """The numbered context the model reads."""
    return "\n\n".join(_block(i + 1, c) for i, c in enumerate(chunks))


def _strip_overlap(previous: str, text: str) -> str:
    """`text` without a prefix that repeats the end of `previous` (at least 20 characters)."""
    longest = min(len(previous), len(text))
    for size in range(longest, 19, -1):
        if previous.endswith(text[:size]):
            return text[size:].lstrip()
    return text


def assemble_rag_context(
    retrieved: list[ScoredChunk],
    *,
    max_tokens: int = 4000,
    order: ContextOrder = ContextOrder.SCORE,
) -> AssembledRagContext:
    """The chunks for the model's context, in context order, within `max_tokens`."""
    seen: set[str] = set()
    unique: list[ScoredChunk] = []
    for chunk in sorted(retrieved, key=lambda c: -c.score):
        if chunk.chunk.id in seen:
            continue
        seen.add(chunk.chunk.id)
        unique.append(chunk)
    # Neighbouring chunks of one document: drop the text the previous one already has.
    by_place = {(c.chunk.document_id, c.chunk.position): c for c in unique}
    cleaned: list[ScoredChunk] = []
    for chunk in unique:
        previous = by_place.get((chunk.chunk.document_id, chunk.chunk.position - 1))
        text = chunk.chunk.text
        if previous is not None:
            text = _strip_overlap(previous.chunk.text, text)
            if not text.strip():
                continue
        if text != chunk.chunk.text:
            chunk = chunk.model_copy(
                update={"chunk": chunk.chunk.model_copy(update={"text": text})}
            )
        cleaned.append(chunk)
    kept: list[ScoredChunk] = []
    used = 0
    for chunk in cleaned:  # best first: the budget drops the lowest scores
        cost = count_text_tokens(_block(len(kept) + 1, chunk)) + 2
        if used + cost > max_tokens:
            continue
        kept.append(chunk)
        used += cost
    if order is ContextOrder.POSITION:
        first_rank: dict[str, int] = {}
        for rank, chunk in enumerate(kept):
            first_rank.setdefault(chunk.chunk.document_id, rank)
        kept.sort(key=lambda c: (first_rank[c.chunk.document_id], c.chunk.position))
    return AssembledRagContext(
        chunks=kept,
        retrieved_count=len(retrieved),
        context_tokens=count_text_tokens(render_context(kept)),
    )
