"""RagService: indexes, their documents and search; ingestion (server/servicers/
rag_ingestions.py) and answers (rag_answers.py) are mixed in."""

from __future__ import annotations

import grpc

from loomwork.errors import InvalidArgument, Violations
from loomwork.rag.query import MAX_QUERY_CHARS, validate_retrieval
from loomwork.rag.store import check_index_spec, validate_index_name
from loomwork.rag.system import RagSystem
from protos.loomwork.v1 import rag_pb2, rag_pb2_grpc
from server.runtime import Runtime, rag_system
from server.servicers import rag_convert as convert
from server.servicers.rag_answers import AnswerRpcs
from server.servicers.rag_ingestions import IngestionRpcs
from server.servicers.tenancy import tenant


class RagServicer(IngestionRpcs, AnswerRpcs, rag_pb2_grpc.RagServiceServicer):
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
            tenant(),
            page_size=convert.page_size_from_proto(request.page_size),
            page_token=request.page_token,
        )
        return rag_pb2.ListIndexesResponse(
            indexes=[convert.index_to_proto(i) for i in indexes], next_page_token=token
        )

    async def DeleteIndex(
        self, request: rag_pb2.DeleteIndexRequest, context: grpc.aio.ServicerContext
    ) -> rag_pb2.DeleteIndexResponse:
        tenant_id = tenant()
        await self.rag.store.get_index(tenant_id, request.index_name)
        await self._cancel_ingestions(tenant_id, request.index_name)
        await self.rag.store.delete_index(tenant_id, request.index_name)
        return rag_pb2.DeleteIndexResponse()

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
        size = convert.page_size_from_proto(request.page_size)
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
