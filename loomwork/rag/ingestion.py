"""Durable ingestion, as steps over the domain: prepare (extract + chunk), embed a batch,
commit a document, finish. Each step is one Temporal activity (activities/rag.py).

State lives in Postgres (the ingestion record, the sources' bytes, staged chunks), so
every step is idempotent: a retried or re-run step after a worker crash redoes its
work without duplicating chunks, and progress counters are recomputed, not added to.
Every change publishes an event to the ingestion's RunEventLog.
"""

from __future__ import annotations

import base64
import hashlib
import logging
from datetime import UTC, datetime
from typing import Any, Literal

from pydantic import BaseModel, Field

from loomwork.errors import FailedPrecondition, NotFound
from loomwork.rag.chunking import chunk_document
from loomwork.rag.embedders import Embedders
from loomwork.rag.extract import DocumentUnreadable, extract
from loomwork.rag.models import (
    Chunk,
    ChunkingOptions,
    DocumentError,
    DocumentFormat,
    DocumentRecord,
)
from loomwork.rag.store import RagStore, vector_literal
from loomwork.storage.database import Database
from loomwork.streams.run_events import RunEventLog
from loomwork.telemetry import TENANT, operation

log = logging.getLogger(__name__)

DocStatus = Literal[
    "pending", "extracting", "chunking", "embedding", "succeeded", "unchanged", "failed", "canceled"
]
IngestionStatus = Literal[
    "pending", "running", "succeeded", "partially_succeeded", "failed", "canceled"
]
TERMINAL_DOC = ("succeeded", "unchanged", "failed", "canceled")
TERMINAL = ("succeeded", "partially_succeeded", "failed", "canceled")


def _keep(record: IngestionRecord) -> None:
    """No change (a record re-published as it is)."""


EMBED_BATCH = 64


def _now() -> datetime:
    return datetime.now(UTC)


def ingestion_workflow_id(index_name: str, tenant: str, ingestion_id: str) -> str:
    """`rag/<index>/<tenant>/<ingestion>`: the ingestion's Temporal workflow id."""
    return f"rag/{index_name}/{tenant}/{ingestion_id}"


def derived_document_id(data: bytes) -> str:
    """A document id from the content, for documents given without one."""
    return document_id_from_digest(hashlib.sha256(data).digest())


def document_id_from_digest(sha256: bytes) -> str:
    """`derived_document_id` from the content's SHA-256 (for content read in parts)."""
    return "doc_" + base64.b32encode(sha256).decode().rstrip("=")[:26]


def ingestion_log_key(tenant: str, ingestion_id: str) -> str:
    return f"ingest/{tenant}/{ingestion_id}"


class SourceDocument(BaseModel):
    """A document of an ingestion as given (its bytes are in rag_sources)."""

    document_id: str
    file_name: str = ""
    title: str = ""
    source_uri: str = ""
    format: DocumentFormat = DocumentFormat.UNSPECIFIED
    metadata: dict[str, Any] = Field(default_factory=dict)
    size_bytes: int = 0
    content_hash: str = ""


class IngestionDocumentState(BaseModel):
    document_id: str
    file_name: str = ""
    status: DocStatus = "pending"
    chunks_total: int = 0
    chunks_done: int = 0
    page_count: int = 0
    error: DocumentError | None = None


class IngestionProgress(BaseModel):
    documents_total: int = 0
    documents_done: int = 0
    documents_failed: int = 0
    chunks_total: int = 0
    chunks_done: int = 0


class IngestionRecord(BaseModel):
    id: str
    tenant: str
    index_name: str
    status: IngestionStatus = "pending"
    progress: IngestionProgress = Field(default_factory=IngestionProgress)
    documents: list[IngestionDocumentState] = Field(default_factory=list)
    sources: list[SourceDocument] = Field(default_factory=list)
    chunking: ChunkingOptions = Field(default_factory=ChunkingOptions)
    error: DocumentError | None = None
    create_time: datetime = Field(default_factory=_now)
    start_time: datetime | None = None
    end_time: datetime | None = None
    workflow_id: str = ""
    # Id of the `finished` event: WatchIngestion rebuilds that event with it once the
    # ingestion's events have expired from Redis.
    terminal_event_id: int = 0

    def recount(self) -> None:
        docs = self.documents
        self.progress = IngestionProgress(
            documents_total=len(docs),
            documents_done=sum(d.status in ("succeeded", "unchanged") for d in docs),
            documents_failed=sum(d.status == "failed" for d in docs),
            chunks_total=sum(d.chunks_total for d in docs),
            chunks_done=sum(d.chunks_done for d in docs),
        )


class IngestionEvent(BaseModel):
    """What the ingestion's event log carries."""

    type: Literal["progress", "document", "finished"]
    time: datetime = Field(default_factory=_now)
    progress: IngestionProgress
    document_id: str = ""
    document: IngestionDocumentState | None = None
    record: IngestionRecord | None = None


def new_ingestion(
    tenant: str,
    index_name: str,
    ingestion_id: str,
    sources: list[SourceDocument],
    chunking: ChunkingOptions,
) -> IngestionRecord:
    """The record of an ingestion about to start (stored with `IngestionSteps.create`)."""
    record = IngestionRecord(
        id=ingestion_id,
        tenant=tenant,
        index_name=index_name,
        documents=[
            IngestionDocumentState(document_id=s.document_id, file_name=s.file_name)
            for s in sources
        ],
        sources=sources,
        chunking=chunking,
        workflow_id=ingestion_workflow_id(index_name, tenant, ingestion_id),
    )
    record.recount()
    return record


INGEST_PARALLELISM = 4
INGEST_CONTINUE_AFTER = 1000


class OpenDocument(BaseModel):
    """A prepared document whose chunks [0, embedded) are embedded, not yet committed."""

    ordinal: int
    chunk_count: int
    embedded: int = 0


class IngestionCursor(BaseModel):
    """Where a run continued as new picks up: the work left and the counters so far."""

    next_ordinal: int = 0
    open_documents: list[OpenDocument] = Field(default_factory=list)
    documents_done: int = 0
    chunks_done: int = 0
    continued: int = 0


class IngestionRequest(BaseModel):
    """The workflow's input: references only, the bytes stay in Postgres.

    `parallelism` bounds the activities in flight; a run continues as new once it has
    started `continue_after` activities (or Temporal suggests it), carrying `cursor`.
    """

    tenant: str
    ingestion_id: str
    index_name: str
    document_count: int
    batch_size: int = EMBED_BATCH
    parallelism: int = Field(default=INGEST_PARALLELISM, ge=1)
    continue_after: int = Field(default=INGEST_CONTINUE_AFTER, ge=1)
    cursor: IngestionCursor | None = None


class PreparedDocument(BaseModel):
    status: DocStatus
    chunk_count: int = 0


class IngestionSteps:
    """The ingestion's steps over the store, the embedders and the event log."""

    def __init__(
        self, db: Database, store: RagStore, embedders: Embedders, events: RunEventLog
    ) -> None:
        self.db = db
        self.store = store
        self.embedders = embedders
        self.events = events

    # -- records

    async def create(
        self, record: IngestionRecord, contents: list[bytes], *, upload_id: str = ""
    ) -> IngestionRecord:
        """Store a new ingestion and its sources (`contents`, or the parts of an upload,
        assembled inside Postgres); an existing id returns the stored one."""
        async with self.db.connection() as conn, conn.transaction():
            cur = await conn.execute(
                """
                insert into rag_ingestions (tenant_id, id, index_name, status, record)
                values (%s, %s, %s, %s, %s) on conflict do nothing returning id
                """,
                (
                    record.tenant,
                    record.id,
                    record.index_name,
                    record.status,
                    record.model_dump_json(),
                ),
            )
            if await cur.fetchone() is None:
                return await self.get(record.tenant, record.id)
            if upload_id:
                await conn.execute(
                    """
                    insert into rag_sources (tenant_id, ingestion_id, ordinal, content)
                    select tenant_id, %s, 0, string_agg(content, ''::bytea order by seq)
                    from rag_upload_parts where tenant_id = %s and upload_id = %s
                    group by tenant_id
                    """,
                    (record.id, record.tenant, upload_id),
                )
                await conn.execute(
                    "delete from rag_upload_parts where tenant_id = %s and upload_id = %s",
                    (record.tenant, upload_id),
                )
                return record
            async with conn.cursor() as c:
                await c.executemany(
                    "insert into rag_sources (tenant_id, ingestion_id, ordinal, content)"
                    " values (%s, %s, %s, %s)",
                    [(record.tenant, record.id, i, data) for i, data in enumerate(contents)],
                )
        return record

    async def add_upload_part(self, tenant: str, upload_id: str, seq: int, part: bytes) -> None:
        """Store one part of an upload in progress."""
        async with self.db.connection() as conn:
            await conn.execute(
                "insert into rag_upload_parts (tenant_id, upload_id, seq, content)"
                " values (%s, %s, %s, %s)",
                (tenant, upload_id, seq, part),
            )

    async def discard_upload(self, tenant: str, upload_id: str) -> None:
        """Drop the parts of an upload that will not complete."""
        async with self.db.connection() as conn:
            await conn.execute(
                "delete from rag_upload_parts where tenant_id = %s and upload_id = %s",
                (tenant, upload_id),
            )

    async def get(self, tenant: str, ingestion_id: str) -> IngestionRecord:
        async with self.db.connection() as conn:
            cur = await conn.execute(
                "select record from rag_ingestions where tenant_id = %s and id = %s",
                (tenant, ingestion_id),
            )
            row = await cur.fetchone()
        if row is None:
            raise NotFound(f"ingestion {ingestion_id!r} not found")
        return IngestionRecord.model_validate(row["record"])

    async def list(
        self,
        tenant: str,
        *,
        index_name: str = "",
        statuses: list[str] | None = None,
        offset: int = 0,
        limit: int = 50,
    ) -> list[IngestionRecord]:
        """Newest first; `limit` + 1 rows tell the caller whether more exist."""
        async with self.db.connection() as conn:
            cur = await conn.execute(
                """
                select record from rag_ingestions
                where tenant_id = %s and (%s = '' or index_name = %s)
                  and (cardinality(%s::text[]) = 0 or status = any(%s::text[]))
                order by seq desc offset %s limit %s
                """,
                (
                    tenant,
                    index_name,
                    index_name,
                    statuses or [],
                    statuses or [],
                    offset,
                    limit,
                ),
            )
            rows = await cur.fetchall()
        return [IngestionRecord.model_validate(r["record"]) for r in rows]

    async def _update(
        self,
        tenant: str,
        ingestion_id: str,
        change: Any,
        event: Literal["progress", "document", "finished"],
        document_id: str = "",
        *,
        embedded_of: str = "",
    ) -> IngestionRecord:
        """Apply `change(record)` under a row lock, save, publish one event.

        With `embedded_of`, `change` gets the number of that document's embedded staged
        chunks, counted under the lock: batches that run at once each count after every
        batch committed before them, so the last count saved is the exact one."""
        async with self.db.connection() as conn, conn.transaction():
            cur = await conn.execute(
                "select record from rag_ingestions where tenant_id = %s and id = %s for update",
                (tenant, ingestion_id),
            )
            row = await cur.fetchone()
            if row is None:
                raise NotFound(f"ingestion {ingestion_id!r} not found")
            record = IngestionRecord.model_validate(row["record"])
            if embedded_of:
                cur = await conn.execute(
                    "select count(*) as n from rag_staged_chunks where tenant_id = %s"
                    " and ingestion_id = %s and document_id = %s and position >= 0"
                    " and embedding is not null",
                    (tenant, ingestion_id, embedded_of),
                )
                counted = await cur.fetchone()
                change(record, int(counted["n"]) if counted else 0)
            else:
                change(record)
            record.recount()
            await conn.execute(
                "update rag_ingestions set record = %s, status = %s"
                " where tenant_id = %s and id = %s",
                (record.model_dump_json(), record.status, tenant, ingestion_id),
            )
        doc = next((d for d in record.documents if d.document_id == document_id), None)
        payload = IngestionEvent(
            type=event,
            progress=record.progress,
            document_id=document_id,
            document=doc if event == "document" else None,
            record=record if event == "finished" else None,
        )
        event_id = await self.events.publish(
            ingestion_log_key(tenant, ingestion_id),
            payload.model_dump_json().encode(),
            terminal=event == "finished",
        )
        if not event_id:  # the log had ended: a late event, dropped
            return record
        if event == "finished":
            record.terminal_event_id = event_id
            async with self.db.connection() as conn:
                await conn.execute(
                    "update rag_ingestions set record = %s where tenant_id = %s and id = %s",
                    (record.model_dump_json(), tenant, ingestion_id),
                )
        return record

    async def _set_doc(self, request: IngestionRequest, ordinal: int, **changes: Any) -> None:
        def change(record: IngestionRecord) -> None:
            doc = record.documents[ordinal]
            for key, value in changes.items():
                setattr(doc, key, value)

        doc_id = (await self.get(request.tenant, request.ingestion_id)).documents[ordinal]
        await self._update(
            request.tenant, request.ingestion_id, change, "document", doc_id.document_id
        )

    # -- steps

    async def start(self, request: IngestionRequest) -> None:
        def change(record: IngestionRecord) -> None:
            if record.status == "pending":
                record.status = "running"
                record.start_time = _now()

        await self._update(request.tenant, request.ingestion_id, change, "progress")

    async def prepare(self, request: IngestionRequest, ordinal: int) -> PreparedDocument:
        """Extract and chunk one document into staged chunks (or find it unchanged/failed)."""
        record = await self.get(request.tenant, request.ingestion_id)
        state, source = record.documents[ordinal], record.sources[ordinal]
        if state.status in TERMINAL_DOC:
            return PreparedDocument(status=state.status, chunk_count=state.chunks_total)
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
        await self._set_doc(
            request, ordinal, status="embedding", chunks_total=len(chunks), chunks_done=0
        )
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
        record = await self.get(request.tenant, request.ingestion_id)
        document_id = record.documents[ordinal].document_id
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
        async with self.db.connection() as conn, conn.transaction(), conn.cursor() as cur:
            await cur.executemany(
                "update rag_staged_chunks set embedding = %s::vector where tenant_id = %s"
                " and ingestion_id = %s and document_id = %s and position = %s",
                [
                    (
                        vector_literal(v),
                        request.tenant,
                        request.ingestion_id,
                        document_id,
                        r["position"],
                    )
                    for r, v in zip(rows, vectors, strict=True)
                ],
            )

        def change(rec: IngestionRecord, embedded: int) -> None:
            rec.documents[ordinal].chunks_done = embedded

        await self._update(
            request.tenant,
            request.ingestion_id,
            change,
            "progress",
            document_id,
            embedded_of=document_id,
        )
        return len(rows)

    async def commit(self, request: IngestionRequest, ordinal: int) -> None:
        """Move the document's embedded chunks into the index, replacing its old ones."""
        record = await self.get(request.tenant, request.ingestion_id)
        state = record.documents[ordinal]
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

        def change(record: IngestionRecord) -> None:
            for doc in record.documents:
                if doc.status not in TERMINAL_DOC:
                    doc.status = "canceled" if canceled else "failed"
                    if not canceled:
                        doc.error = DocumentError(code=13, reason="INGESTION_FAILED", message=error)
            failed = sum(d.status == "failed" for d in record.documents)
            if canceled:
                record.status = "canceled"
            elif error:
                record.status = "failed"
                record.error = DocumentError(code=13, reason="INGESTION_FAILED", message=error)
            elif failed == len(record.documents):
                record.status = "failed"
            elif failed:
                record.status = "partially_succeeded"
            else:
                record.status = "succeeded"
            record.end_time = _now()

        current = await self.get(request.tenant, request.ingestion_id)
        if current.status in TERMINAL:
            if current.terminal_event_id:
                return current
            # A retry after the status was saved but before `finished` was published (or
            # its id saved): publish it now, or take the id it was stored under.
            return await self._update(request.tenant, request.ingestion_id, _keep, "finished")
        async with self.db.connection() as conn, conn.transaction():
            for table in ("rag_sources", "rag_staged_chunks"):
                await conn.execute(
                    f"delete from {table} where tenant_id = %s and ingestion_id = %s",
                    (request.tenant, request.ingestion_id),
                )
        return await self._update(request.tenant, request.ingestion_id, change, "finished")
