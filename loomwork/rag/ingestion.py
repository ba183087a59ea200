"""Durable ingestion, as steps over the domain: prepare (extract + chunk), embed a batch,
commit a document, finish. Each step is one Temporal activity (activities/rag.py).

State lives in Postgres (the ingestion's row and its documents' rows, the sources' bytes,
staged chunks), so every step is idempotent: a retried or re-run step after a worker crash
redoes its work without duplicating chunks. A batch counts the chunks it embedded itself
(those still without an embedding), in the transaction that stores them: a batch run twice
counts them once. Every change publishes an event to the ingestion's RunEventLog.
"""

from __future__ import annotations

import hashlib
import logging
from datetime import UTC, datetime

from loomwork.errors import FailedPrecondition, NotFound
from loomwork.rag.chunking import chunk_document
from loomwork.rag.embedders import Embedders
from loomwork.rag.extract import DocumentUnreadable, extract
from loomwork.rag.ingestion_models import (
    TERMINAL,
    TERMINAL_DOC,
    IngestionEvent,
    IngestionProgress,
    IngestionRecord,
    IngestionRequest,
    PreparedDocument,
)
from loomwork.rag.ingestion_store import IngestionStore
from loomwork.rag.models import Chunk, DocumentError, DocumentRecord
from loomwork.rag.store import RagStore, vector_literal
from loomwork.storage.database import Database
from loomwork.streams.run_events import RunEventLog
from loomwork.telemetry import TENANT, operation

log = logging.getLogger(__name__)


class IngestionSteps(IngestionStore):
    """The ingestion's steps over its record (IngestionStore), the index's store and the
    embedders."""

    def __init__(
        self, db: Database, store: RagStore, embedders: Embedders, events: RunEventLog
    ) -> None:
        super().__init__(db, events)
        self.store = store
        self.embedders = embedders

    async def start(self, request: IngestionRequest) -> None:
        def change(record: IngestionRecord) -> None:
            if record.status == "pending":
                record.status = "running"
                record.start_time = datetime.now(UTC)

        record = await self._change_record(request.tenant, request.ingestion_id, change)
        await self._publish(
            request.tenant,
            request.ingestion_id,
            IngestionEvent(type="progress", progress=record.progress),
        )

    async def prepare(self, request: IngestionRequest, ordinal: int) -> PreparedDocument:
        """Extract and chunk one document into staged chunks (or find it unchanged/failed)."""
        state, source = await self.document(request, ordinal)
        if state.status in TERMINAL_DOC:
            return PreparedDocument(status=state.status, chunk_count=state.chunks_total)
        record = await self.get(request.tenant, request.ingestion_id, documents=False)
        index = await self.store.get_index(request.tenant, request.index_name, counts=False)
        await self._set_doc(request, ordinal, status="extracting")
        async with self.db.connection() as conn:
            cur = await conn.execute(
                "select content from rag_sources where tenant_id = %s and ingestion_id = %s"
                " and ordinal = %s",
                (request.tenant, request.ingestion_id, ordinal),
            )
            row = await cur.fetchone()
        if row is None:
            raise NotFound(f"the content of document {source.document_id!r} is gone")
        data = bytes(row["content"])
        digest = hashlib.sha256(data).hexdigest()
        stored = await self.store.stored_hash(index.id, source.document_id)
        if stored is not None and stored == (digest, "ready"):
            await self._set_doc(request, ordinal, status="unchanged")
            return PreparedDocument(status="unchanged")
        pending = DocumentRecord(
            id=source.document_id,
            index_name=index.name,
            title=source.title or source.file_name or source.document_id,
            file_name=source.file_name,
            source_uri=source.source_uri,
            format=source.format,
            metadata=source.metadata,
            ingestion_id=request.ingestion_id,
        )
        try:
            extracted = extract(data, source.format, source.file_name)
        except DocumentUnreadable as exc:
            error = DocumentError(code=exc.code, reason=exc.reason, message=exc.message)
            await self.store.begin_document(index.id, pending)
            await self.store.fail_document(
                index.id, source.document_id, error, request.ingestion_id
            )
            await self._set_doc(request, ordinal, status="failed", error=error)
            return PreparedDocument(status="failed")
        await self._set_doc(request, ordinal, status="chunking", page_count=extracted.page_count)
        chunks = chunk_document(
            extracted,
            record.chunking,
            document_id=source.document_id,
            content_hash=digest,
            metadata=source.metadata,
        )
        if not chunks:
            error = DocumentError(code=3, reason="DOCUMENT_EMPTY", message="no text to index")
            await self.store.begin_document(index.id, pending)
            await self.store.fail_document(
                index.id, source.document_id, error, request.ingestion_id
            )
            await self._set_doc(request, ordinal, status="failed", error=error)
            return PreparedDocument(status="failed")
        pending.format = extracted.format
        await self.store.begin_document(index.id, pending)
        staged = DocumentRecord.model_validate(
            {
                **pending.model_dump(),
                "title": source.title or extracted.title or source.file_name or source.document_id,
                "content_hash": digest,
                "size_bytes": len(data),
                "page_count": extracted.page_count,
            }
        )
        async with self.db.connection() as conn, conn.transaction():
            await conn.execute(
                "delete from rag_staged_chunks where tenant_id = %s and ingestion_id = %s"
                " and document_id = %s",
                (request.tenant, request.ingestion_id, source.document_id),
            )
            async with conn.cursor() as cur:
                await cur.executemany(
                    "insert into rag_staged_chunks (tenant_id, ingestion_id, document_id,"
                    " position, chunk) values (%s, %s, %s, %s, %s)",
                    [
                        (
                            request.tenant,
                            request.ingestion_id,
                            source.document_id,
                            c.position,
                            c.model_dump_json(),
                        )
                        for c in chunks
                    ]
                    + [
                        (
                            request.tenant,
                            request.ingestion_id,
                            source.document_id,
                            -1,
                            staged.model_dump_json(),
                        )
                    ],
                )
            # With the staging: the chunks counted are those staged now, none embedded.
            doc, progress = await self._write_doc(
                conn,
                request,
                ordinal,
                {"status": "embedding", "chunks_total": len(chunks), "chunks_done": 0},
            )
        await self._publish_doc(request, doc, progress)
        return PreparedDocument(status="embedding", chunk_count=len(chunks))

    async def embed_batch(
        self, request: IngestionRequest, ordinal: int, start: int, end: int
    ) -> int:
        """Embed staged chunks [start, end) of one document; returns how many."""
        with operation(
            "embeddings batch",
            {
                TENANT: request.tenant,
                "gen_ai.operation.name": "embeddings",
                "loomwork.rag.index": request.index_name,
                "loomwork.rag.batch_start": start,
                "loomwork.rag.batch_end": end,
            },
        ):
            return await self._embed_batch(request, ordinal, start, end)

    async def _embed_batch(
        self, request: IngestionRequest, ordinal: int, start: int, end: int
    ) -> int:
        state, _ = await self.document(request, ordinal)
        document_id = state.document_id
        index = await self.store.get_index(request.tenant, request.index_name, counts=False)
        async with self.db.connection() as conn:
            cur = await conn.execute(
                "select position, chunk from rag_staged_chunks where tenant_id = %s"
                " and ingestion_id = %s and document_id = %s and position >= %s"
                " and position < %s order by position",
                (request.tenant, request.ingestion_id, document_id, start, end),
            )
            rows = await cur.fetchall()
        texts = [Chunk.model_validate(r["chunk"]).text for r in rows]
        embedder = await self.embedders.get(index.embedding_model, index.dimension)
        vectors = await embedder.embed(texts)
        async with self.db.connection() as conn, conn.transaction():
            # Only chunks still without an embedding: a batch run twice (its first worker
            # gone after committing, or still running) counts each chunk once.
            cur = await conn.execute(
                "update rag_staged_chunks s set embedding = v.embedding::vector"
                " from unnest(%s::integer[], %s::text[]) as v(position, embedding)"
                " where s.tenant_id = %s and s.ingestion_id = %s and s.document_id = %s"
                " and s.position = v.position and s.embedding is null",
                (
                    [r["position"] for r in rows],
                    [vector_literal(v) for v in vectors],
                    request.tenant,
                    request.ingestion_id,
                    document_id,
                ),
            )
            embedded = max(cur.rowcount, 0)
            await conn.execute(
                "update rag_ingestion_documents set chunks_done = chunks_done + %s"
                " where tenant_id = %s and ingestion_id = %s and ordinal = %s",
                (embedded, request.tenant, request.ingestion_id, ordinal),
            )
            progress = await self._count(
                conn,
                request.tenant,
                request.ingestion_id,
                IngestionProgress(chunks_done=embedded),
            )
        await self._publish(
            request.tenant,
            request.ingestion_id,
            IngestionEvent(type="progress", progress=progress, document_id=document_id),
        )
        return len(rows)

    async def commit(self, request: IngestionRequest, ordinal: int) -> None:
        """Move the document's embedded chunks into the index, replacing its old ones."""
        state, _ = await self.document(request, ordinal)
        if state.status in TERMINAL_DOC:
            return
        index = await self.store.get_index(request.tenant, request.index_name, counts=False)
        async with self.db.connection() as conn:
            cur = await conn.execute(
                "select position, chunk, embedding::text as embedding from rag_staged_chunks"
                " where tenant_id = %s and ingestion_id = %s and document_id = %s"
                " order by position",
                (request.tenant, request.ingestion_id, state.document_id),
            )
            rows = await cur.fetchall()
        if not rows or rows[0]["position"] != -1:
            raise FailedPrecondition(f"document {state.document_id!r} was not prepared")
        document = DocumentRecord.model_validate(rows[0]["chunk"])
        chunks = [Chunk.model_validate(r["chunk"]) for r in rows[1:]]
        embeddings = [r["embedding"] for r in rows[1:]]
        if any(e is None for e in embeddings):
            raise FailedPrecondition(f"document {state.document_id!r} is not fully embedded")
        await self.store.commit_document(index, document, chunks, embeddings)
        await self._set_doc(request, ordinal, status="succeeded", chunks_done=len(chunks))
        # Only once the document is marked done: a commit retried before that (its worker
        # gone) finds its staged chunks and commits them again (a replace).
        async with self.db.connection() as conn:
            await conn.execute(
                "delete from rag_staged_chunks where tenant_id = %s and ingestion_id = %s"
                " and document_id = %s",
                (request.tenant, request.ingestion_id, state.document_id),
            )

    async def finish(
        self, request: IngestionRequest, *, canceled: bool = False, error: str = ""
    ) -> IngestionRecord:
        """Settle the final status, drop the sources and staged chunks, publish `finished`."""
        current = await self.get(request.tenant, request.ingestion_id)
        if current.status in TERMINAL:
            if current.terminal_event_id:
                return current
            # A retry after the status was saved but before `finished` was published (or
            # its id saved): publish it now, or take the id it was stored under.
            return await self._publish_finished(current)
        async with self.db.connection() as conn, conn.transaction():
            for table in ("rag_sources", "rag_staged_chunks"):
                await conn.execute(
                    f"delete from {table} where tenant_id = %s and ingestion_id = %s",
                    (request.tenant, request.ingestion_id),
                )
        settled = await self._settle(request, canceled=canceled, error=error)
        return await self._publish_finished(settled)
