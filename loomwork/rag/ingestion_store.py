"""Ingestions in Postgres: the ingestion's row (its own fields as JSON, its counters as
columns), one row per document (its state and its source as given), the sources' bytes, and
the parts of an upload still coming in. Every change is published to the ingestion's event
log.

A change to one document writes that document's row and adds the difference it makes to
the ingestion's counters (`chunks_done = chunks_done + n`): its cost does not grow with the
number of documents, and changes to different documents only meet on the ingestion's row
for one short UPDATE. Locks are always taken staged chunks -> document -> ingestion."""

from __future__ import annotations

import json
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

import psycopg

from loomwork.errors import NotFound
from loomwork.rag.ingestion_models import (
    TERMINAL,
    TERMINAL_DOC,
    IngestionDocumentState,
    IngestionEvent,
    IngestionProgress,
    IngestionRecord,
    IngestionRequest,
    SourceDocument,
    counted,
    ingestion_log_key,
)
from loomwork.rag.models import DocumentError
from loomwork.storage.database import Database
from loomwork.streams.run_events import RunEventLog

Connection = psycopg.AsyncConnection[Any]

_COUNTERS = "documents_total, documents_done, documents_failed, chunks_total, chunks_done"
_DOC_STATE = "document_id, file_name, status, chunks_total, chunks_done, page_count, error"
# The record's JSON holds the ingestion-level fields only.
_NOT_IN_RECORD = {"documents", "sources", "progress"}


def _record_json(record: IngestionRecord) -> str:
    return record.model_dump_json(exclude=_NOT_IN_RECORD)


def _progress(row: dict[str, Any]) -> IngestionProgress:
    return IngestionProgress.model_validate({k: row[k] for k in IngestionProgress.model_fields})


async def _locked_record(conn: Connection, tenant: str, ingestion_id: str) -> IngestionRecord:
    """The ingestion's own fields (documents not read), its row locked to the transaction."""
    cur = await conn.execute(
        f"select record, {_COUNTERS} from rag_ingestions"
        " where tenant_id = %s and id = %s for update",
        (tenant, ingestion_id),
    )
    row = await cur.fetchone()
    if row is None:
        raise NotFound(f"ingestion {ingestion_id!r} not found")
    return _record(row, [])


def _record(row: dict[str, Any], documents: list[IngestionDocumentState]) -> IngestionRecord:
    fields = {k: v for k, v in row["record"].items() if k not in _NOT_IN_RECORD}
    return IngestionRecord.model_validate(
        {**fields, "progress": _progress(row), "documents": documents}
    )


def _doc_state(row: dict[str, Any]) -> IngestionDocumentState:
    return IngestionDocumentState.model_validate({k: row[k] for k in _DOC_STATE.split(", ")})


def _json_or_none(error: DocumentError | None) -> str | None:
    return None if error is None else error.model_dump_json()


class IngestionStore:
    """The tenant's ingestions, their documents and sources, with the event log they publish
    to."""

    def __init__(self, db: Database, events: RunEventLog) -> None:
        self.db = db
        self.events = events

    async def create(
        self, record: IngestionRecord, contents: list[bytes], *, upload_id: str = ""
    ) -> IngestionRecord:
        """Store a new ingestion, its documents with their sources (`record.sources`) and the
        sources' bytes (`contents`, or the parts of an upload, assembled inside Postgres); an
        existing id returns the stored one."""
        record.recount()
        p = record.progress
        async with self.db.connection() as conn, conn.transaction():
            cur = await conn.execute(
                f"""
                insert into rag_ingestions
                    (tenant_id, id, index_name, status, record, {_COUNTERS})
                values (%s, %s, %s, %s, %s, %s, %s, %s, %s, %s)
                on conflict do nothing returning id
                """,
                (
                    record.tenant,
                    record.id,
                    record.index_name,
                    record.status,
                    _record_json(record),
                    p.documents_total,
                    p.documents_done,
                    p.documents_failed,
                    p.chunks_total,
                    p.chunks_done,
                ),
            )
            if await cur.fetchone() is None:
                return await self.get(record.tenant, record.id)
            sources = {s.document_id: s for s in record.sources}
            async with conn.cursor() as c:
                await c.executemany(
                    f"insert into rag_ingestion_documents (tenant_id, ingestion_id, ordinal,"
                    f" {_DOC_STATE}, source) values (%s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s)",
                    [
                        (
                            record.tenant,
                            record.id,
                            i,
                            d.document_id,
                            d.file_name,
                            d.status,
                            d.chunks_total,
                            d.chunks_done,
                            d.page_count,
                            _json_or_none(d.error),
                            sources.get(
                                d.document_id, SourceDocument(document_id=d.document_id)
                            ).model_dump_json(),
                        )
                        for i, d in enumerate(record.documents)
                    ],
                )
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

    async def get(
        self, tenant: str, ingestion_id: str, *, documents: bool = True
    ) -> IngestionRecord:
        """The ingestion, with every document's state in order unless `documents` is False."""
        async with self.db.connection() as conn:
            cur = await conn.execute(
                f"select record, {_COUNTERS} from rag_ingestions where tenant_id = %s and id = %s",
                (tenant, ingestion_id),
            )
            row = await cur.fetchone()
            if row is None:
                raise NotFound(f"ingestion {ingestion_id!r} not found")
            states: list[IngestionDocumentState] = []
            if documents:
                cur = await conn.execute(
                    f"select {_DOC_STATE} from rag_ingestion_documents"
                    " where tenant_id = %s and ingestion_id = %s order by ordinal",
                    (tenant, ingestion_id),
                )
                states = [_doc_state(r) for r in await cur.fetchall()]
        return _record(row, states)

    async def list(
        self,
        tenant: str,
        *,
        index_name: str = "",
        statuses: list[str] | None = None,
        offset: int = 0,
        limit: int = 50,
    ) -> list[IngestionRecord]:
        """Newest first, without their documents; `limit` + 1 rows tell the caller whether
        more exist."""
        async with self.db.connection() as conn:
            cur = await conn.execute(
                f"""
                select record, {_COUNTERS} from rag_ingestions
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
        return [_record(r, []) for r in rows]

    async def document(
        self, request: IngestionRequest, ordinal: int
    ) -> tuple[IngestionDocumentState, SourceDocument]:
        """Document `ordinal` of the ingestion: its state and its source as given."""
        async with self.db.connection() as conn:
            cur = await conn.execute(
                f"select {_DOC_STATE}, source from rag_ingestion_documents"
                " where tenant_id = %s and ingestion_id = %s and ordinal = %s",
                (request.tenant, request.ingestion_id, ordinal),
            )
            row = await cur.fetchone()
        if row is None:
            raise NotFound(f"document {ordinal} of ingestion {request.ingestion_id!r} not found")
        return _doc_state(row), SourceDocument.model_validate(row["source"])

    async def _count(
        self, conn: Connection, tenant: str, ingestion_id: str, change: IngestionProgress
    ) -> IngestionProgress:
        """Add `change` to the ingestion's counters; the counters after."""
        if change == IngestionProgress():  # nothing to add: no lock on the ingestion's row
            cur = await conn.execute(
                f"select {_COUNTERS} from rag_ingestions where tenant_id = %s and id = %s",
                (tenant, ingestion_id),
            )
            row = await cur.fetchone()
            if row is None:
                raise NotFound(f"ingestion {ingestion_id!r} not found")
            return _progress(row)
        cur = await conn.execute(
            f"""
            update rag_ingestions set documents_done = documents_done + %s,
                documents_failed = documents_failed + %s, chunks_total = chunks_total + %s,
                chunks_done = chunks_done + %s
            where tenant_id = %s and id = %s returning {_COUNTERS}
            """,
            (
                change.documents_done,
                change.documents_failed,
                change.chunks_total,
                change.chunks_done,
                tenant,
                ingestion_id,
            ),
        )
        row = await cur.fetchone()
        if row is None:
            raise NotFound(f"ingestion {ingestion_id!r} not found")
        return _progress(row)

    async def _write_doc(
        self, conn: Connection, request: IngestionRequest, ordinal: int, changes: dict[str, Any]
    ) -> tuple[IngestionDocumentState, IngestionProgress]:
        """Change document `ordinal` inside the caller's transaction, and the counters by
        the difference it makes; (its new state, the counters)."""
        cur = await conn.execute(
            f"select {_DOC_STATE} from rag_ingestion_documents"
            " where tenant_id = %s and ingestion_id = %s and ordinal = %s for update",
            (request.tenant, request.ingestion_id, ordinal),
        )
        row = await cur.fetchone()
        if row is None:
            raise NotFound(f"document {ordinal} of ingestion {request.ingestion_id!r} not found")
        before = _doc_state(row)
        after = before.model_copy(update=changes)
        await conn.execute(
            "update rag_ingestion_documents set status = %s, chunks_total = %s,"
            " chunks_done = %s, page_count = %s, error = %s"
            " where tenant_id = %s and ingestion_id = %s and ordinal = %s",
            (
                after.status,
                after.chunks_total,
                after.chunks_done,
                after.page_count,
                _json_or_none(after.error),
                request.tenant,
                request.ingestion_id,
                ordinal,
            ),
        )
        change = counted(after)
        change.add(counted(before), -1)
        return after, await self._count(conn, request.tenant, request.ingestion_id, change)

    async def _set_doc(self, request: IngestionRequest, ordinal: int, **changes: Any) -> None:
        """Change document `ordinal` and publish its new state (a `document` event)."""
        async with self.db.connection() as conn, conn.transaction():
            doc, progress = await self._write_doc(conn, request, ordinal, changes)
        await self._publish_doc(request, doc, progress)

    async def _publish_doc(
        self, request: IngestionRequest, doc: IngestionDocumentState, progress: IngestionProgress
    ) -> None:
        await self._publish(
            request.tenant,
            request.ingestion_id,
            IngestionEvent(
                type="document", progress=progress, document_id=doc.document_id, document=doc
            ),
        )

    async def _publish(self, tenant: str, ingestion_id: str, event: IngestionEvent) -> int:
        """Publish `event` to the ingestion's log; its id (0: the log had ended, dropped)."""
        return await self.events.publish(
            ingestion_log_key(tenant, ingestion_id),
            event.model_dump_json().encode(),
            terminal=event.type == "finished",
        )

    async def _change_record(
        self, tenant: str, ingestion_id: str, change: Callable[[IngestionRecord], None]
    ) -> IngestionRecord:
        """Apply `change` to the ingestion's own fields under its row lock (documents not
        read); the record after."""
        async with self.db.connection() as conn, conn.transaction():
            record = await _locked_record(conn, tenant, ingestion_id)
            change(record)
            await conn.execute(
                "update rag_ingestions set record = %s, status = %s"
                " where tenant_id = %s and id = %s",
                (_record_json(record), record.status, tenant, ingestion_id),
            )
        return record

    async def _settle(
        self, request: IngestionRequest, *, canceled: bool, error: str
    ) -> IngestionRecord:
        """End the ingestion: documents not done CANCELED (or FAILED with `error`), the
        counters recounted from the documents, the final status; one already ended keeps
        its status. The record with its documents."""
        tenant, ingestion_id = request.tenant, request.ingestion_id
        failure = DocumentError(code=13, reason="INGESTION_FAILED", message=error)
        async with self.db.connection() as conn, conn.transaction():
            await conn.execute(
                "update rag_ingestion_documents set status = %s,"
                " error = case when %s then error else %s::jsonb end"
                " where tenant_id = %s and ingestion_id = %s and status <> all(%s::text[])",
                (
                    "canceled" if canceled else "failed",
                    canceled,
                    failure.model_dump_json(),
                    tenant,
                    ingestion_id,
                    list(TERMINAL_DOC),
                ),
            )
            cur = await conn.execute(
                """
                select count(*) as documents_total,
                    count(*) filter (where status in ('succeeded', 'unchanged'))
                        as documents_done,
                    count(*) filter (where status = 'failed') as documents_failed,
                    coalesce(sum(chunks_total), 0) as chunks_total,
                    coalesce(sum(chunks_done), 0) as chunks_done
                from rag_ingestion_documents where tenant_id = %s and ingestion_id = %s
                """,
                (tenant, ingestion_id),
            )
            counted_row = await cur.fetchone()
            assert counted_row is not None
            progress = _progress(counted_row)

            def change(record: IngestionRecord) -> None:
                if record.status in TERMINAL:
                    return
                if canceled:
                    record.status = "canceled"
                elif error:
                    record.status = "failed"
                    record.error = failure
                elif progress.documents_failed == progress.documents_total:
                    record.status = "failed"
                elif progress.documents_failed:
                    record.status = "partially_succeeded"
                else:
                    record.status = "succeeded"
                record.end_time = datetime.now(UTC)

            record = await _locked_record(conn, tenant, ingestion_id)
            change(record)
            await conn.execute(
                """
                update rag_ingestions set record = %s, status = %s, documents_total = %s,
                    documents_done = %s, documents_failed = %s, chunks_total = %s,
                    chunks_done = %s
                where tenant_id = %s and id = %s
                """,
                (
                    _record_json(record),
                    record.status,
                    progress.documents_total,
                    progress.documents_done,
                    progress.documents_failed,
                    progress.chunks_total,
                    progress.chunks_done,
                    tenant,
                    ingestion_id,
                ),
            )
        return await self.get(tenant, ingestion_id)

    async def _publish_finished(self, record: IngestionRecord) -> IngestionRecord:
        """Publish the `finished` event of an ended ingestion and keep its id."""
        event_id = await self._publish(
            record.tenant,
            record.id,
            IngestionEvent(type="finished", progress=record.progress, record=record),
        )
        if not event_id:  # the log had ended: a late event, dropped
            return record
        record.terminal_event_id = event_id
        async with self.db.connection() as conn:
            await conn.execute(
                "update rag_ingestions set record = jsonb_set(record, '{terminal_event_id}', %s)"
                " where tenant_id = %s and id = %s",
                (json.dumps(event_id), record.tenant, record.id),
            )
        return record
