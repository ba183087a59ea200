"""An ingestion as data: its record (status, progress, each document's state) as Postgres
keeps it (the ingestion's row and one row per document) and its event log carries it, the
sources as given, the workflow's request and the cursor a run continued as new picks up,
and the ids an ingestion goes by."""

from __future__ import annotations

import base64
import hashlib
from datetime import UTC, datetime
from typing import Any, Literal

from pydantic import BaseModel, Field

from loomwork.rag.models import ChunkingOptions, DocumentError, DocumentFormat

DocStatus = Literal[
    "pending", "extracting", "chunking", "embedding", "succeeded", "unchanged", "failed", "canceled"
]
IngestionStatus = Literal[
    "pending", "running", "succeeded", "partially_succeeded", "failed", "canceled"
]
TERMINAL_DOC = ("succeeded", "unchanged", "failed", "canceled")
TERMINAL = ("succeeded", "partially_succeeded", "failed", "canceled")

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

    def add(self, other: IngestionProgress, sign: int = 1) -> None:
        """Add `other`'s counters (`sign` -1: take them away)."""
        for name in IngestionProgress.model_fields:
            setattr(self, name, getattr(self, name) + sign * getattr(other, name))


class IngestionRecord(BaseModel):
    """An ingestion. `documents` is empty where a reader asked for the ingestion alone
    (listings); `sources` is what `IngestionStore.create` stores beside each document, never
    read back nor serialized (events and workflow results stay small)."""

    id: str
    tenant: str
    index_name: str
    status: IngestionStatus = "pending"
    progress: IngestionProgress = Field(default_factory=IngestionProgress)
    documents: list[IngestionDocumentState] = Field(default_factory=list)
    sources: list[SourceDocument] = Field(default_factory=list, exclude=True)
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
        """The counters, from `documents`."""
        self.progress = IngestionProgress(documents_total=len(self.documents))
        for doc in self.documents:
            self.progress.add(counted(doc))


def counted(doc: IngestionDocumentState) -> IngestionProgress:
    """What one document adds to its ingestion's counters (all but `documents_total`)."""
    return IngestionProgress(
        documents_done=int(doc.status in ("succeeded", "unchanged")),
        documents_failed=int(doc.status == "failed"),
        chunks_total=doc.chunks_total,
        chunks_done=doc.chunks_done,
    )


class IngestionEvent(BaseModel):
    """What the ingestion's event log carries."""

    type: Literal["progress", "document", "finished"]
    time: datetime = Field(default_factory=_now)
    progress: IngestionProgress
    document_id: str = ""
    document: IngestionDocumentState | None = None
    record: IngestionRecord | None = None


def finished_event(record: IngestionRecord) -> IngestionEvent:
    """The `finished` event of an ingestion that has ended, as its record says."""
    return IngestionEvent(
        type="finished",
        time=record.end_time or record.create_time,
        progress=record.progress,
        record=record,
    )


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
