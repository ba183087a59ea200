"""The parallel ingestion's work plan: which activity runs next, and what is left over.

Pure bookkeeping (no Temporal calls), so the order it hands work out in is deterministic:
first the commit of a document whose chunks are all embedded, then the next embedding
batch of the oldest prepared document, then the preparation of the next document while
fewer than `parallelism` documents are open (this bounds the staged chunks in Postgres).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from temporalio import workflow

with workflow.unsafe.imports_passed_through():
    from loomwork.rag.ingestion_models import IngestionCursor, IngestionRequest, OpenDocument


@dataclass
class Job:
    """One activity to run: prepare document `ordinal`, embed [start, end) of it, or commit."""

    kind: Literal["prepare", "embed", "commit"]
    ordinal: int
    start: int = 0
    end: int = 0


@dataclass
class _Document:
    ordinal: int
    chunk_count: int = -1  # -1: not prepared yet
    next_start: int = 0  # batches below it were handed out
    in_flight: int = 0
    committing: bool = False


class WorkPlan:
    """The documents of one ingestion run, from its cursor; `next_job` hands work out."""

    def __init__(self, request: IngestionRequest, cursor: IngestionCursor) -> None:
        self.count = request.document_count
        self.batch = request.batch_size
        self.parallelism = request.parallelism
        self.next_ordinal = cursor.next_ordinal
        self.open: dict[int, _Document] = {
            d.ordinal: _Document(d.ordinal, d.chunk_count, d.embedded)
            for d in cursor.open_documents
        }

    def next_job(self) -> Job | None:
        for doc in self.open.values():
            ready = doc.chunk_count >= 0 and doc.next_start >= doc.chunk_count
            if ready and not doc.in_flight and not doc.committing:
                doc.committing = True
                return Job("commit", doc.ordinal)
        for doc in self.open.values():
            if 0 <= doc.next_start < doc.chunk_count:
                start, end = doc.next_start, min(doc.next_start + self.batch, doc.chunk_count)
                doc.next_start = end
                doc.in_flight += 1
                return Job("embed", doc.ordinal, start, end)
        if self.next_ordinal < self.count and len(self.open) < self.parallelism:
            ordinal = self.next_ordinal
            self.next_ordinal += 1
            self.open[ordinal] = _Document(ordinal)
            return Job("prepare", ordinal)
        return None

    def prepared(self, ordinal: int, chunk_count: int | None) -> None:
        """Document `ordinal` is staged with `chunk_count` chunks (None: nothing to embed)."""
        if chunk_count is None:
            del self.open[ordinal]
        else:
            self.open[ordinal].chunk_count = chunk_count

    def embedded(self, ordinal: int) -> None:
        self.open[ordinal].in_flight -= 1

    def committed(self, ordinal: int) -> None:
        del self.open[ordinal]

    def left(self) -> bool:
        return bool(self.open) or self.next_ordinal < self.count

    def cursor(self, documents_done: int, chunks_done: int, continued: int) -> IngestionCursor:
        """The work left once nothing is in flight (every batch handed out is embedded)."""
        return IngestionCursor(
            next_ordinal=self.next_ordinal,
            open_documents=[
                OpenDocument(ordinal=d.ordinal, chunk_count=d.chunk_count, embedded=d.next_start)
                for d in self.open.values()
            ],
            documents_done=documents_done,
            chunks_done=chunks_done,
            continued=continued,
        )
