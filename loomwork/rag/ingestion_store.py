"""Ingestions in Postgres: the record of each (changed under a row lock, every change
published to the ingestion's event log), the sources' bytes, and the parts of an upload
still coming in."""

from __future__ import annotations

from typing import Any, Literal

from loomwork.errors import NotFound
from loomwork.rag.ingestion_models import (
    IngestionEvent,
    IngestionRecord,
    IngestionRequest,
    ingestion_log_key,
)
from loomwork.storage.database import Database
from loomwork.streams.run_events import RunEventLog


class IngestionStore:
    """The tenant's ingestion records and their sources, with the event log they publish to."""

    def __init__(self, db: Database, events: RunEventLog) -> None:
        self.db = db
        self.events = events

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
