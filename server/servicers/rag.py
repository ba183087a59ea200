"""RagService: indexes, durable ingestion on Temporal, search, and streamed answers."""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import re
from collections.abc import AsyncIterator
from typing import Any

import grpc
from temporalio.client import WorkflowExecutionStatus
from temporalio.common import (
    SearchAttributePair,
    TypedSearchAttributes,
    WorkflowIDConflictPolicy,
    WorkflowIDReusePolicy,
)
from temporalio.exceptions import WorkflowAlreadyStartedError
from temporalio.service import RPCError

from activities.workflow_runs import START_OUTCOME_UNKNOWN
from loomwork.errors import FailedPrecondition, InvalidArgument, NotFound, Violations
from loomwork.ids import CLIENT_ID_RULE, is_valid_client_id, new_id
from loomwork.paging import decode_page_token, encode_page_token
from loomwork.rag.answer import AnswerEvent, AnswerRecord, AnswerRequest, answer_log_key
from loomwork.rag.chunking import validate_chunking
from loomwork.rag.ingestion_models import (
    TERMINAL,
    IngestionEvent,
    IngestionRecord,
    IngestionRequest,
    SourceDocument,
    document_id_from_digest,
    ingestion_log_key,
    new_ingestion,
)
from loomwork.rag.models import ChunkingOptions, DocumentFormat
from loomwork.rag.query import MAX_QUERY_CHARS, validate_retrieval
from loomwork.rag.store import check_index_spec, validate_index_name
from loomwork.rag.system import RagSystem
from protos.loomwork.v1 import rag_pb2, rag_pb2_grpc
from server.quotas import admit_run, refuse_run
from server.runtime import Runtime, rag_system
from server.servicers import rag_convert as convert
from server.servicers.keep_alive_convert import keep_alive_to_proto
from server.servicers.relay import KeepAlive, KeepAlives, relay_run_events, workflow_liveness
from server.servicers.tenancy import tenant
from server.servicers.well_known_convert import set_timestamp
from workflows.ingestion import IngestionWorkflow
from workflows.rag_answer import RagAnswerWorkflow
from workflows.search_attributes import RUN, STATUS, TENANT

DOCUMENT_ID = re.compile(r"^[A-Za-z0-9._:-]{1,128}$")
MAX_DOCUMENTS = 100
MAX_INLINE_BYTES = 16 * 1024 * 1024
MAX_UPLOAD_BYTES = 1024 * 1024 * 1024
MAX_UPLOAD_CHUNK = 3 * 1024 * 1024
MAX_METADATA_BYTES = 16 * 1024


def answer_workflow_id(index_name: str, tenant_id: str, answer_id: str) -> str:
    return f"rag-answer/{index_name}/{tenant_id}/{answer_id}"


def _page_size(value: int, field: str = "page_size") -> int:
    if not 0 <= value <= 1000:
        raise InvalidArgument.field(field, "must be 1..1000 (0 means 50)")
    return value or 50


class RagServicer(rag_pb2_grpc.RagServiceServicer):
    def __init__(self, runtime: Runtime) -> None:
        self.runtime = runtime
        self.rag: RagSystem = runtime.rag or rag_system(
            runtime.settings, runtime.db, runtime.events, runtime.chat_models, runtime.usage
        )

    # -- indexes

    async def CreateIndex(
        self, request: rag_pb2.CreateIndexRequest, context: grpc.aio.ServicerContext
    ) -> rag_pb2.CreateIndexResponse:
        if not request.HasField("index"):
            raise InvalidArgument.field("index", "is required")
        spec = convert.index_spec_from_proto(request.index)
        check_index_spec(spec)
        if not await self.rag.store.text_search_config_exists(spec.text_search_config):
            raise InvalidArgument.field(
                "index.text_search_config", f"{spec.text_search_config!r} is not installed"
            )
        model, dimension = await self.rag.embedders.resolve(spec.embedding_model, spec.dimension)
        spec = spec.model_copy(update={"embedding_model": model, "dimension": dimension})
        index = await self.rag.store.create_index(tenant(), spec)
        return rag_pb2.CreateIndexResponse(index=convert.index_to_proto(index))

    async def GetIndex(
        self, request: rag_pb2.GetIndexRequest, context: grpc.aio.ServicerContext
    ) -> rag_pb2.GetIndexResponse:
        index = await self.rag.store.get_index(tenant(), request.index_name)
        return rag_pb2.GetIndexResponse(index=convert.index_to_proto(index))

    async def ListIndexes(
        self, request: rag_pb2.ListIndexesRequest, context: grpc.aio.ServicerContext
    ) -> rag_pb2.ListIndexesResponse:
        indexes, token = await self.rag.store.list_indexes(
            tenant(), page_size=_page_size(request.page_size), page_token=request.page_token
        )
        return rag_pb2.ListIndexesResponse(
            indexes=[convert.index_to_proto(i) for i in indexes], next_page_token=token
        )

    async def DeleteIndex(
        self, request: rag_pb2.DeleteIndexRequest, context: grpc.aio.ServicerContext
    ) -> rag_pb2.DeleteIndexResponse:
        tenant_id = tenant()
        await self.rag.store.get_index(tenant_id, request.index_name)
        active = await self.rag.ingestion.list(
            tenant_id, index_name=request.index_name, statuses=["pending", "running"], limit=1000
        )
        for record in active:
            await self._cancel_workflow(record.workflow_id)
        await self.rag.store.delete_index(tenant_id, request.index_name)
        return rag_pb2.DeleteIndexResponse()

    # -- ingestion

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
        with contextlib.suppress(WorkflowAlreadyStartedError):
            await self.runtime.temporal.start_workflow(
                IngestionWorkflow.run,
                IngestionRequest(
                    tenant=tenant_id,
                    ingestion_id=ingestion_id,
                    index_name=index_name,
                    document_count=len(stored.documents),
                    parallelism=self.runtime.settings.ingest_parallelism,
                    continue_after=self.runtime.settings.ingest_continue_after,
                ),
                id=workflow_id,
                task_queue=self.runtime.settings.task_queue,
                id_conflict_policy=WorkflowIDConflictPolicy.USE_EXISTING,
                id_reuse_policy=WorkflowIDReusePolicy.REJECT_DUPLICATE,
                search_attributes=TypedSearchAttributes(
                    [
                        SearchAttributePair(TENANT, tenant_id),
                        SearchAttributePair(RUN, ingestion_id),
                        SearchAttributePair(STATUS, "PENDING"),
                    ]
                ),
                static_summary=f"ingest {len(stored.documents)} document(s) into {index_name}",
            )
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
        size = _page_size(request.page_size)
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
            finished = IngestionEvent(
                type="finished",
                time=record.end_time or record.create_time,
                progress=record.progress,
                record=record,
            )
            return record.terminal_event_id, finished

        async for item in relay_run_events(
            self.runtime.events,
            ingestion_log_key(record.tenant, record.id),
            record.id,
            request.after_event_id,
            IngestionEvent.model_validate_json,
            expired_end=expired_end,
            keep_alive=self._keep_alives(record.workflow_id),
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

    # -- documents

    def _document_key(self, index_name: str, document_id: str) -> None:
        problems = Violations()
        if not index_name:
            problems.add("index_name", "is required")
        if not document_id:
            problems.add("document_id", "is required")
        problems.raise_if_any()

    async def GetDocument(
        self, request: rag_pb2.GetDocumentRequest, context: grpc.aio.ServicerContext
    ) -> rag_pb2.GetDocumentResponse:
        self._document_key(request.index_name, request.document_id)
        document = await self.rag.store.get_document(
            tenant(), request.index_name, request.document_id
        )
        return rag_pb2.GetDocumentResponse(document=convert.document_to_proto(document))

    async def ListDocuments(
        self, request: rag_pb2.ListDocumentsRequest, context: grpc.aio.ServicerContext
    ) -> rag_pb2.ListDocumentsResponse:
        validate_index_name(request.index_name)
        size = _page_size(request.page_size)
        statuses = []
        for i, status in enumerate(request.statuses):
            if status not in convert.DOC_STATUS_FROM:
                raise InvalidArgument.field(f"statuses[{i}]", "is not a known DocumentStatus")
            statuses.append(convert.DOC_STATUS_FROM[status])
        filter = convert.filter_from_proto(request.filter) if request.HasField("filter") else None
        documents, token = await self.rag.store.list_documents(
            tenant(),
            request.index_name,
            page_size=size,
            page_token=request.page_token,
            filter=filter,
            statuses=statuses,
        )
        return rag_pb2.ListDocumentsResponse(
            documents=[convert.document_to_proto(d) for d in documents], next_page_token=token
        )

    async def DeleteDocument(
        self, request: rag_pb2.DeleteDocumentRequest, context: grpc.aio.ServicerContext
    ) -> rag_pb2.DeleteDocumentResponse:
        self._document_key(request.index_name, request.document_id)
        await self.rag.store.delete_document(tenant(), request.index_name, request.document_id)
        return rag_pb2.DeleteDocumentResponse()

    # -- search

    async def Query(
        self, request: rag_pb2.QueryRequest, context: grpc.aio.ServicerContext
    ) -> rag_pb2.QueryResponse:
        problems = Violations()
        if not request.index_name:
            problems.add("index_name", "is required")
        if not request.query.strip():
            problems.add("query", "is required")
        elif len(request.query) > MAX_QUERY_CHARS:
            problems.add("query", f"at most {MAX_QUERY_CHARS} characters")
        problems.raise_if_any()
        validate_index_name(request.index_name)
        options = validate_retrieval(convert.retrieval_from_proto(request.retrieval))
        tenant_id = tenant()
        index = await self.rag.store.get_index(tenant_id, request.index_name)
        results, _ = await self.rag.retriever.search(
            tenant_id, request.index_name, request.query, options
        )
        return rag_pb2.QueryResponse(
            results=[convert.scored_to_proto(r, i + 1) for i, r in enumerate(results)],
            embedding_model=index.embedding_model,
        )

    # -- answers

    async def Answer(
        self, request: rag_pb2.AnswerRequest, context: grpc.aio.ServicerContext
    ) -> AsyncIterator[rag_pb2.AnswerResponse]:
        tenant_id = tenant()
        answer = convert.answer_request_from_proto(
            request, tenant_id, request.client_answer_id or new_id("ans")
        )
        await self.rag.store.get_index(tenant_id, answer.index_name)
        workflow_id = answer_workflow_id(answer.index_name, tenant_id, answer.answer_id)
        slot = await admit_run(self.runtime, tenant_id, workflow_id)  # the tenant's quotas
        record, created = await self.rag.answers.create(
            tenant_id,
            AnswerRecord(
                id=answer.answer_id,
                index_name=answer.index_name,
                query=answer.query,
                model=answer.model or self.runtime.settings.chat_model,
                workflow_id=workflow_id,
            ),
        )
        # Started by the call that recorded it, or by a repeat if that call's start failed
        # (still pending, same index): a repeat of a run under way joins it (USE_EXISTING).
        if created or (record.status == "pending" and record.workflow_id == workflow_id):
            with contextlib.suppress(WorkflowAlreadyStartedError):  # ended meanwhile
                await self._start_answer(answer, workflow_id, tenant_id, slot)
        async for event in self._answer_events(tenant_id, record, 0):
            yield rag_pb2.AnswerResponse(event=event)

    async def _start_answer(
        self, answer: AnswerRequest, workflow_id: str, tenant_id: str, slot: bool
    ) -> None:
        try:
            await self.runtime.temporal.start_workflow(
                RagAnswerWorkflow.run,
                answer,
                id=workflow_id,
                task_queue=self.runtime.settings.task_queue,
                id_conflict_policy=WorkflowIDConflictPolicy.USE_EXISTING,
                id_reuse_policy=WorkflowIDReusePolicy.REJECT_DUPLICATE,
                search_attributes=TypedSearchAttributes(
                    [
                        SearchAttributePair(TENANT, tenant_id),
                        SearchAttributePair(RUN, answer.answer_id),
                    ]
                ),
                static_summary=f"answer from {answer.index_name}",
            )
        except RPCError as error:
            if error.status not in START_OUTCOME_UNKNOWN:
                await refuse_run(self.runtime, tenant_id, workflow_id, slot)
            raise

    async def _answer_events(
        self, tenant_id: str, record: AnswerRecord, after: int
    ) -> AsyncIterator[rag_pb2.AnswerEvent]:
        """The answer's events after `after`, to its end."""

        async def expired_end() -> tuple[int, AnswerEvent] | None:
            # Its events expired: only the terminal event, rebuilt with its original id.
            if not record.terminal_event_id:
                return None
            if record.status == "failed":
                payload = AnswerEvent(type="failed", error=record.error, record=record)
            else:
                payload = AnswerEvent(type="finished", record=record)
            payload.time = record.end_time or record.create_time
            return record.terminal_event_id, payload

        async for item in relay_run_events(
            self.runtime.events,
            answer_log_key(tenant_id, record.id),
            record.id,
            after,
            AnswerEvent.model_validate_json,
            expired_end=expired_end,
            keep_alive=self._keep_alives(record.workflow_id),
        ):
            if isinstance(item, KeepAlive):
                alive = rag_pb2.AnswerEvent(
                    event_id=item.last_event_id,
                    answer_id=record.id,
                    keep_alive=keep_alive_to_proto(item),
                )
                set_timestamp(alive.time, item.time)
                yield alive
                continue
            event_id, event = item
            yield convert.answer_event_to_proto(record.id, event_id, event)

    def _keep_alives(self, workflow_id: str) -> KeepAlives:
        """Keep-alives of an ingestion's or answer's stream, saying whether its workflow is
        open (these streams have no closed-run check of their own)."""
        return KeepAlives(
            self.runtime.settings.stream_keepalive_seconds,
            workflow_liveness(self.runtime.temporal, workflow_id) if workflow_id else None,
        )

    async def _answer(self, answer_id: str) -> AnswerRecord:
        if not answer_id:
            raise InvalidArgument.field("answer_id", "is required")
        return await self.rag.answers.get(tenant(), answer_id)

    async def GetAnswer(
        self, request: rag_pb2.GetAnswerRequest, context: grpc.aio.ServicerContext
    ) -> rag_pb2.GetAnswerResponse:
        record = await self._answer(request.answer_id)
        last = await self.runtime.events.last_id(answer_log_key(tenant(), record.id))
        last = max(last, record.terminal_event_id)  # its events may have expired
        return rag_pb2.GetAnswerResponse(answer=convert.answer_to_proto(record, last))

    async def WatchAnswer(
        self, request: rag_pb2.WatchAnswerRequest, context: grpc.aio.ServicerContext
    ) -> AsyncIterator[rag_pb2.WatchAnswerResponse]:
        if request.after_event_id < 0:
            raise InvalidArgument.field("after_event_id", "must be 0 or more")
        record = await self._answer(request.answer_id)
        async for event in self._answer_events(tenant(), record, request.after_event_id):
            yield rag_pb2.WatchAnswerResponse(event=event)

    async def CancelAnswer(
        self, request: rag_pb2.CancelAnswerRequest, context: grpc.aio.ServicerContext
    ) -> rag_pb2.CancelAnswerResponse:
        record = await self._answer(request.answer_id)
        if record.status in ("succeeded", "failed"):
            raise FailedPrecondition(f"answer {record.id!r} has already ended ({record.status})")
        if record.status != "canceled":
            handle = self.runtime.temporal.get_workflow_handle(record.workflow_id)
            try:
                description = await handle.describe()
                if description.status == WorkflowExecutionStatus.RUNNING:
                    await handle.cancel()
            except RPCError as error:
                raise NotFound(f"answer {record.id!r} has no run") from error
        record = await self.rag.answers.get(tenant(), record.id)
        last = await self.runtime.events.last_id(answer_log_key(tenant(), record.id))
        return rag_pb2.CancelAnswerResponse(answer=convert.answer_to_proto(record, last))
