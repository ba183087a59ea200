"""`client.rag`: vector indexes, document ingestion, search and cited answers (RagService)."""

# `timeout=` on the async methods is the gRPC deadline of the call, as in grpc's own API.
# ruff: noqa: ASYNC109

from __future__ import annotations

import hashlib
from collections.abc import AsyncIterator, Mapping, Sequence
from typing import Any

from clients.transport import Transport, iter_pages, to_struct
from protos.loomwork.v1 import rag_pb2, rag_pb2_grpc

__all__ = ["RagClient"]


class RagClient:
    """Indexes (create, read, list, delete), ingestions (inline or uploaded, watched,
    cancelled), documents (list, delete), queries and streamed answers."""

    def __init__(self, transport: Transport) -> None:
        self._transport = transport
        self._stub = rag_pb2_grpc.RagServiceStub(transport.channel)

    # -- indexes

    async def create_index(
        self,
        name: str,
        *,
        description: str = "",
        embedding_model: str = "",
        dimension: int = 0,
        metadata: Mapping[str, Any] | None = None,
        timeout: float | None = None,
    ) -> rag_pb2.Index:
        """Creates a vector index (embedding model and dimension default to the server's)."""
        index = rag_pb2.Index(
            name=name,
            description=description,
            embedding_model=embedding_model,
            dimension=dimension,
            metadata=to_struct(metadata),
        )
        response = await self._transport.call(
            self._stub.CreateIndex,
            rag_pb2.CreateIndexRequest(index=index),
            rag_pb2.CreateIndexResponse,
            timeout,
        )
        return response.index

    async def get_index(self, name: str, *, timeout: float | None = None) -> rag_pb2.Index:
        response = await self._transport.call(
            self._stub.GetIndex,
            rag_pb2.GetIndexRequest(index_name=name),
            rag_pb2.GetIndexResponse,
            timeout,
        )
        return response.index

    async def list_indexes(self, *, timeout: float | None = None) -> list[rag_pb2.Index]:
        """Every index of the tenant, by name."""
        pages = iter_pages(
            lambda page_token: self._transport.call(
                self._stub.ListIndexes,
                rag_pb2.ListIndexesRequest(page_size=1000, page_token=page_token),
                rag_pb2.ListIndexesResponse,
                timeout,
            )
        )
        return [index async for page in pages for index in page.indexes]

    async def delete_index(self, name: str, *, timeout: float | None = None) -> None:
        await self._transport.call(
            self._stub.DeleteIndex,
            rag_pb2.DeleteIndexRequest(index_name=name),
            rag_pb2.DeleteIndexResponse,
            timeout,
        )

    # -- ingestion

    async def ingest_documents(
        self,
        index_name: str,
        documents: Sequence[rag_pb2.DocumentInput],
        *,
        chunking: rag_pb2.ChunkingOptions | None = None,
        client_ingestion_id: str = "",
        timeout: float | None = None,
    ) -> rag_pb2.Ingestion:
        """Starts an ingestion of inline documents; follow it with `watch_ingestion`."""
        request = rag_pb2.IngestDocumentsRequest(
            index_name=index_name,
            documents=documents,
            chunking=chunking,
            client_ingestion_id=client_ingestion_id,
        )
        response = await self._transport.call(
            self._stub.IngestDocuments, request, rag_pb2.IngestDocumentsResponse, timeout
        )
        return response.ingestion

    async def upload_document(
        self,
        index_name: str,
        data: bytes,
        document: rag_pb2.DocumentInput | None = None,
        *,
        chunking: rag_pb2.ChunkingOptions | None = None,
        piece_bytes: int = 1024 * 1024,
        timeout: float | None = None,
    ) -> rag_pb2.Ingestion:
        """Uploads one large document as a client stream (header, then 1 MiB pieces)."""

        async def requests() -> AsyncIterator[rag_pb2.UploadDocumentRequest]:
            yield rag_pb2.UploadDocumentRequest(
                header=rag_pb2.UploadDocumentHeader(
                    index_name=index_name,
                    document=document,
                    chunking=chunking,
                    size_bytes=len(data),
                    sha256=hashlib.sha256(data).hexdigest(),
                )
            )
            for start in range(0, len(data), piece_bytes):
                yield rag_pb2.UploadDocumentRequest(chunk=data[start : start + piece_bytes])

        response = await self._transport.call(
            self._stub.UploadDocument, requests(), rag_pb2.UploadDocumentResponse, timeout
        )
        return response.ingestion

    async def get_ingestion(
        self, ingestion_id: str, *, timeout: float | None = None
    ) -> rag_pb2.Ingestion:
        response = await self._transport.call(
            self._stub.GetIngestion,
            rag_pb2.GetIngestionRequest(ingestion_id=ingestion_id),
            rag_pb2.GetIngestionResponse,
            timeout,
        )
        return response.ingestion

    def watch_ingestion(
        self, ingestion_id: str, after_event_id: int = 0, *, keep_alives: bool = False
    ) -> AsyncIterator[rag_pb2.IngestionEvent]:
        """The ingestion's progress events until its `finished` event (no deadline);
        `keep_alives=True` also yields the keep-alives of a quiet stream (not events)."""
        request = rag_pb2.WatchIngestionRequest(
            ingestion_id=ingestion_id, after_event_id=after_event_id
        )
        return self._transport.events(
            self._stub.WatchIngestion, request, None, no_deadline=True, keep_alives=keep_alives
        )

    async def cancel_ingestion(
        self, ingestion_id: str, *, timeout: float | None = None
    ) -> rag_pb2.Ingestion:
        response = await self._transport.call(
            self._stub.CancelIngestion,
            rag_pb2.CancelIngestionRequest(ingestion_id=ingestion_id),
            rag_pb2.CancelIngestionResponse,
            timeout,
        )
        return response.ingestion

    # -- documents

    async def list_documents(
        self, index_name: str, *, timeout: float | None = None
    ) -> list[rag_pb2.Document]:
        """Every document of an index."""
        pages = iter_pages(
            lambda page_token: self._transport.call(
                self._stub.ListDocuments,
                rag_pb2.ListDocumentsRequest(
                    index_name=index_name, page_size=1000, page_token=page_token
                ),
                rag_pb2.ListDocumentsResponse,
                timeout,
            )
        )
        return [document async for page in pages for document in page.documents]

    async def delete_document(
        self, index_name: str, document_id: str, *, timeout: float | None = None
    ) -> None:
        await self._transport.call(
            self._stub.DeleteDocument,
            rag_pb2.DeleteDocumentRequest(index_name=index_name, document_id=document_id),
            rag_pb2.DeleteDocumentResponse,
            timeout,
        )

    # -- search and answers

    async def query(
        self,
        index_name: str,
        query: str,
        retrieval: rag_pb2.RetrievalOptions | None = None,
        *,
        timeout: float | None = None,
    ) -> list[rag_pb2.ScoredChunk]:
        """The best chunks for `query`, best first."""
        response = await self._transport.call(
            self._stub.Query,
            rag_pb2.QueryRequest(index_name=index_name, query=query, retrieval=retrieval),
            rag_pb2.QueryResponse,
            timeout,
        )
        return list(response.results)

    def answer(
        self,
        index_name: str,
        query: str,
        retrieval: rag_pb2.RetrievalOptions | None = None,
        *,
        model: str = "",
        client_answer_id: str = "",
        keep_alives: bool = False,
    ) -> AsyncIterator[rag_pb2.AnswerEvent]:
        """Streams an answer's events (retrieval, text deltas, citations, finished; no
        deadline); `keep_alives=True` also yields the keep-alives of a quiet stream."""
        request = rag_pb2.AnswerRequest(
            index_name=index_name,
            query=query,
            retrieval=retrieval,
            model=model,
            client_answer_id=client_answer_id,
        )
        return self._transport.events(
            self._stub.Answer, request, None, no_deadline=True, keep_alives=keep_alives
        )
