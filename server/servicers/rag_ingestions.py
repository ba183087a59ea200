"""RagService's ingestion RPCs (IngestDocuments, UploadDocument, GetIngestion,
ListIngestions, WatchIngestion, CancelIngestion): documents checked and stored, then
ingested by an Ingestion workflow on Temporal, its progress streamed from its event log."""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import re
from collections.abc import AsyncIterator
from typing import Any

import grpc
from temporalio.service import RPCError

from activities.ingestion_start import IngestionStarter
from loomwork.errors import FailedPrecondition, InvalidArgument, Violations
from loomwork.ids import CLIENT_ID_RULE, is_valid_client_id, new_id
from loomwork.paging import decode_page_token, encode_page_token
from loomwork.rag.chunking import validate_chunking
from loomwork.rag.ingestion_models import (
    TERMINAL,
    IngestionEvent,
    IngestionRecord,
    IngestionRequest,
    SourceDocument,
    document_id_from_digest,
    finished_event,
    ingestion_log_key,
    new_ingestion,
)
from loomwork.rag.models import ChunkingOptions, DocumentFormat
from loomwork.rag.store import validate_index_name
from loomwork.rag.system import RagSystem
from protos.loomwork.v1 import rag_pb2
from server.runtime import Runtime
from server.servicers import rag_convert as convert
from server.servicers.keep_alive_convert import keep_alive_to_proto
from server.servicers.relay import (
    ClosedRunEnd,
    KeepAlive,
    KeepAlives,
    relay_run_events,
)
from server.servicers.tenancy import tenant
from server.servicers.well_known_convert import set_timestamp
from server.temporal import how_it_closed

DOCUMENT_ID = re.compile(r"^[A-Za-z0-9._:-]{1,128}$")
MAX_DOCUMENTS = 100
MAX_INLINE_BYTES = 16 * 1024 * 1024
MAX_UPLOAD_BYTES = 1024 * 1024 * 1024
MAX_UPLOAD_CHUNK = 3 * 1024 * 1024
MAX_METADATA_BYTES = 16 * 1024


class IngestionRpcs:
    """Mixed into RagServicer, which sets `runtime` and `rag`: every call acts on the
    caller's tenant's ingestions."""

    runtime: Runtime
    rag: RagSystem

    async def _cancel_ingestions(self, tenant_id: str, index_name: str) -> None:
        """Cancel the ingestions into an index that have not ended (it is being deleted)."""
        active = await self.rag.ingestion.list(
            tenant_id, index_name=index_name, statuses=["pending", "running"], limit=1000
        )
        for record in active:
            await self._cancel_workflow(record.workflow_id)

    async def _cancel_workflow(self, workflow_id: str) -> None:
        handle = self.runtime.temporal.get_workflow_handle(workflow_id)
        with contextlib.suppress(RPCError):  # already ended
            await handle.cancel()

    def _source(
        self,
        document: rag_pb2.DocumentInput,
        size: int,
        sha256: bytes,
        field: str,
        problems: Violations,
    ) -> SourceDocument:
        if document.document_id and not DOCUMENT_ID.match(document.document_id):
            problems.add(f"{field}.document_id", "must be 1..128 characters of [A-Za-z0-9._:-]")
        if document.format not in convert.FORMAT_FROM:
            problems.add(f"{field}.format", "is not a known DocumentFormat")
        if len(document.file_name) > 512:
            problems.add(f"{field}.file_name", "at most 512 characters")
        if len(document.title) > 512:
            problems.add(f"{field}.title", "at most 512 characters")
        if len(document.source_uri) > 2048:
            problems.add(f"{field}.source_uri", "at most 2048 characters")
        metadata: dict[str, Any] = {}
        if document.HasField("metadata"):
            metadata = convert.struct_to_dict(document.metadata)
            if len(json.dumps(metadata)) > MAX_METADATA_BYTES:
                problems.add(f"{field}.metadata", "at most 16 KiB serialized")
        return SourceDocument(
            document_id=document.document_id or document_id_from_digest(sha256),
            file_name=document.file_name,
            title=document.title,
            source_uri=document.source_uri,
            format=convert.FORMAT_FROM.get(document.format, DocumentFormat.UNSPECIFIED),
            metadata=metadata,
            size_bytes=size,
            content_hash=sha256.hex(),
        )

    def _chunking(self, request: Any) -> ChunkingOptions:
        return validate_chunking(convert.chunking_from_proto(request.chunking))

    async def _start_ingestion(
        self,
        index_name: str,
        sources: list[SourceDocument],
        contents: list[bytes],
        chunking: ChunkingOptions,
        client_id: str,
        *,
        upload_id: str = "",
    ) -> rag_pb2.Ingestion:
        tenant_id = tenant()
        await self.rag.store.get_index(tenant_id, index_name)
        ingestion_id = client_id or new_id("ing")
        record = new_ingestion(tenant_id, index_name, ingestion_id, sources, chunking)
        workflow_id = record.workflow_id
        stored = await self.rag.ingestion.create(record, contents, upload_id=upload_id)
        if stored.workflow_id != workflow_id:
            # The id names an ingestion into another index: return that one as it is.
            return await self._ingestion_proto(stored)
        starter = IngestionStarter.from_settings(self.runtime.temporal, self.runtime.settings)
        await starter.start(stored, f"ingest {len(stored.documents)} document(s) into {index_name}")
        return await self._ingestion_proto(await self.rag.ingestion.get(tenant_id, ingestion_id))

    async def _ingestion_proto(self, record: IngestionRecord) -> rag_pb2.Ingestion:
        last = await self.runtime.events.last_id(ingestion_log_key(record.tenant, record.id))
        return convert.ingestion_to_proto(record, max(last, record.terminal_event_id))

    async def IngestDocuments(
        self, request: rag_pb2.IngestDocumentsRequest, context: grpc.aio.ServicerContext
    ) -> rag_pb2.IngestDocumentsResponse:
        problems = Violations()
        if not request.index_name:
            problems.add("index_name", "is required")
        if not 1 <= len(request.documents) <= MAX_DOCUMENTS:
            problems.add("documents", f"give 1..{MAX_DOCUMENTS} documents")
        if request.client_ingestion_id and not is_valid_client_id(request.client_ingestion_id):
            problems.add("client_ingestion_id", f"must be {CLIENT_ID_RULE}")
        sources: list[SourceDocument] = []
        contents: list[bytes] = []
        for i, document in enumerate(request.documents):
            field = f"documents[{i}]"
            kind = document.WhichOneof("content")
            if kind is None:
                problems.add(f"{field}.data", "set data or text")
                continue
            data = document.data if kind == "data" else document.text.encode("utf-8")
            if not data:
                problems.add(f"{field}.{kind}", "must not be empty")
                continue
            if len(data) > MAX_INLINE_BYTES:
                problems.add(f"{field}.{kind}", "at most 16 MiB inline; use UploadDocument")
            digest = hashlib.sha256(data).digest()
            sources.append(self._source(document, len(data), digest, field, problems))
            contents.append(data)
        seen: dict[str, int] = {}
        for i, source in enumerate(sources):
            if source.document_id in seen:
                problems.add(
                    f"documents[{i}].document_id",
                    f"{source.document_id!r} is also document {seen[source.document_id]}",
                )
            seen.setdefault(source.document_id, i)
        problems.raise_if_any()
        validate_index_name(request.index_name)
        chunking = self._chunking(request)
        ingestion = await self._start_ingestion(
            request.index_name, sources, contents, chunking, request.client_ingestion_id
        )
        return rag_pb2.IngestDocumentsResponse(ingestion=ingestion)

    async def UploadDocument(
        self,
        request_iterator: AsyncIterator[rag_pb2.UploadDocumentRequest],
        context: grpc.aio.ServicerContext,
    ) -> rag_pb2.UploadDocumentResponse:
        # Parts go to Postgres as they arrive: the server holds one part at a time, and the
        # document is assembled inside Postgres when the ingestion is created.
        tenant_id = tenant()
        upload_id = new_id("upl")
        header: rag_pb2.UploadDocumentHeader | None = None
        sha256 = hashlib.sha256()
        total = 0
        parts = 0
        try:
            async for message in request_iterator:
                kind = message.WhichOneof("payload")
                if header is None:
                    if kind != "header":
                        raise InvalidArgument.field("header", "the first message must be a header")
                    header = message.header
                    continue
                if kind != "chunk":
                    raise InvalidArgument.field("header", "only the first message may be a header")
                if not 1 <= len(message.chunk) <= MAX_UPLOAD_CHUNK:
                    raise InvalidArgument.field("chunk", "each chunk must be 1 byte..3 MiB")
                total += len(message.chunk)
                if total > MAX_UPLOAD_BYTES:
                    raise InvalidArgument.field("chunk", "an upload is at most 1 GiB")
                sha256.update(message.chunk)
                await self.rag.ingestion.add_upload_part(tenant_id, upload_id, parts, message.chunk)
                parts += 1
            if header is None:
                raise InvalidArgument.field("header", "is required")
            problems = Violations()
            if not header.index_name:
                problems.add("header.index_name", "is required")
            if header.document.WhichOneof("content") is not None:
                problems.add("header.document.data", "must be empty: the bytes follow as chunks")
            if not total:
                problems.add("chunk", "send the document's bytes after the header")
            if header.size_bytes and header.size_bytes != total:
                problems.add("header.size_bytes", f"is {header.size_bytes}, received {total}")
            if header.sha256 and header.sha256 != sha256.hexdigest():
                problems.add("header.sha256", "does not match the received bytes")
            if header.client_ingestion_id and not is_valid_client_id(header.client_ingestion_id):
                problems.add("header.client_ingestion_id", f"must be {CLIENT_ID_RULE}")
            source = self._source(
                header.document, total, sha256.digest(), "header.document", problems
            )
            problems.raise_if_any()
            validate_index_name(header.index_name, "header.index_name")
            chunking = self._chunking(header)
            ingestion = await self._start_ingestion(
                header.index_name,
                [source],
                [],
                chunking,
                header.client_ingestion_id,
                upload_id=upload_id,
            )
            return rag_pb2.UploadDocumentResponse(ingestion=ingestion)
        finally:
            # Parts not taken by a new ingestion (bad input, a repeated client id, the client
            # gone): nothing will use them. After a successful create this deletes nothing.
            if parts:
                await asyncio.shield(self.rag.ingestion.discard_upload(tenant_id, upload_id))

    async def _ingestion(self, ingestion_id: str) -> IngestionRecord:
        if not ingestion_id:
            raise InvalidArgument.field("ingestion_id", "is required")
        return await self.rag.ingestion.get(tenant(), ingestion_id)

    async def GetIngestion(
        self, request: rag_pb2.GetIngestionRequest, context: grpc.aio.ServicerContext
    ) -> rag_pb2.GetIngestionResponse:
        record = await self._ingestion(request.ingestion_id)
        return rag_pb2.GetIngestionResponse(ingestion=await self._ingestion_proto(record))

    async def ListIngestions(
        self, request: rag_pb2.ListIngestionsRequest, context: grpc.aio.ServicerContext
    ) -> rag_pb2.ListIngestionsResponse:
        size = convert.page_size_from_proto(request.page_size)
        if request.index_name:
            validate_index_name(request.index_name)
        statuses = []
        for i, status in enumerate(request.statuses):
            if status not in convert.INGESTION_STATUS_FROM:
                raise InvalidArgument.field(f"statuses[{i}]", "is not a known IngestionStatus")
            statuses.append(convert.INGESTION_STATUS_FROM[status])
        tenant_id = tenant()
        scope = f"ingestions:{tenant_id}:{request.index_name}:{sorted(statuses)}"
        offset = decode_page_token(request.page_token, scope) or 0
        records = await self.rag.ingestion.list(
            tenant_id,
            index_name=request.index_name,
            statuses=statuses,
            offset=offset,
            limit=size + 1,
        )
        return rag_pb2.ListIngestionsResponse(
            ingestions=[convert.ingestion_to_proto(r, documents=False) for r in records[:size]],
            next_page_token=encode_page_token(offset + size, scope) if len(records) > size else "",
        )

    async def WatchIngestion(
        self, request: rag_pb2.WatchIngestionRequest, context: grpc.aio.ServicerContext
    ) -> AsyncIterator[rag_pb2.WatchIngestionResponse]:
        if request.after_event_id < 0:
            raise InvalidArgument.field("after_event_id", "must be 0 or more")
        record = await self._ingestion(request.ingestion_id)

        async def expired_end() -> tuple[int, IngestionEvent] | None:
            # Its events expired: only the `finished` event, rebuilt with its original id.
            if record.status not in TERMINAL:
                return None
            return record.terminal_event_id, finished_event(record)

        async def closed_end() -> bytes | None:
            # Its workflow closed and its log has no `finished`: an operator terminated it,
            # it timed out, or the log lost the event. The record is settled as the workflow
            # would have (FAILED with the reason, or CANCELED); one already settled stays.
            closure = await how_it_closed(self.runtime.temporal, record.workflow_id)
            if closure is None:
                return None
            request = IngestionRequest(
                tenant=record.tenant,
                ingestion_id=record.id,
                index_name=record.index_name,
                document_count=len(record.documents),
            )
            settled = await self.rag.ingestion.finish(
                request,
                canceled=closure.canceled,
                error=closure.error or "its workflow completed without finishing it",
            )
            return finished_event(settled).model_dump_json().encode()

        async for item in relay_run_events(
            self.runtime.events,
            ingestion_log_key(record.tenant, record.id),
            record.id,
            request.after_event_id,
            IngestionEvent.model_validate_json,
            expired_end=expired_end,
            closed=ClosedRunEnd(closed_end, at_start=True) if record.workflow_id else None,
            keep_alive=KeepAlives(self.runtime.settings.stream_keepalive_seconds),
        ):
            if isinstance(item, KeepAlive):
                alive = rag_pb2.IngestionEvent(
                    event_id=item.last_event_id,
                    ingestion_id=record.id,
                    keep_alive=keep_alive_to_proto(item),
                )
                set_timestamp(alive.time, item.time)
                yield rag_pb2.WatchIngestionResponse(event=alive)
                continue
            event_id, event = item
            yield rag_pb2.WatchIngestionResponse(
                event=convert.ingestion_event_to_proto(record.id, event_id, event)
            )

    async def CancelIngestion(
        self, request: rag_pb2.CancelIngestionRequest, context: grpc.aio.ServicerContext
    ) -> rag_pb2.CancelIngestionResponse:
        record = await self._ingestion(request.ingestion_id)
        if record.status in TERMINAL and record.status != "canceled":
            raise FailedPrecondition(f"ingestion {record.id!r} has already ended ({record.status})")
        if record.status != "canceled":
            await self._cancel_workflow(record.workflow_id)
        record = await self.rag.ingestion.get(record.tenant, record.id)
        return rag_pb2.CancelIngestionResponse(ingestion=await self._ingestion_proto(record))
