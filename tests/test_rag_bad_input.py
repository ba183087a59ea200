"""RagService refuses bad input with INVALID_ARGUMENT naming the field, on unary and
streaming RPCs."""

from __future__ import annotations

import grpc
import pytest
from google.protobuf import struct_pb2

from protos.loomwork.v1 import rag_pb2
from tests.support import auth, field_violations


@pytest.mark.parametrize(
    ("method", "request_", "field"),
    [
        ("GetIndex", rag_pb2.GetIndexRequest(), "index_name"),
        ("CreateIndex", rag_pb2.CreateIndexRequest(), "index"),
        ("DeleteIndex", rag_pb2.DeleteIndexRequest(index_name="a b"), "index_name"),
        ("ListIndexes", rag_pb2.ListIndexesRequest(page_size=5000), "page_size"),
        ("ListIndexes", rag_pb2.ListIndexesRequest(page_token="junk"), "page_token"),
        ("IngestDocuments", rag_pb2.IngestDocumentsRequest(index_name="x"), "documents"),
        (
            "IngestDocuments",
            rag_pb2.IngestDocumentsRequest(index_name="x", documents=[rag_pb2.DocumentInput()]),
            "documents[0].data",
        ),
        (
            "IngestDocuments",
            rag_pb2.IngestDocumentsRequest(
                index_name="x",
                documents=[rag_pb2.DocumentInput(text="a", document_id="bad id")],
            ),
            "documents[0].document_id",
        ),
        (
            "IngestDocuments",
            rag_pb2.IngestDocumentsRequest(
                index_name="x",
                documents=[rag_pb2.DocumentInput(text="a"), rag_pb2.DocumentInput(text="a")],
            ),
            "documents[1].document_id",
        ),
        (
            "IngestDocuments",
            rag_pb2.IngestDocumentsRequest(
                index_name="x",
                documents=[rag_pb2.DocumentInput(text="a")],
                chunking=rag_pb2.ChunkingOptions(chunk_size=10),
            ),
            "chunking.chunk_size",
        ),
        ("GetIngestion", rag_pb2.GetIngestionRequest(), "ingestion_id"),
        ("CancelIngestion", rag_pb2.CancelIngestionRequest(), "ingestion_id"),
        ("ListIngestions", rag_pb2.ListIngestionsRequest(page_size=-1), "page_size"),
        ("GetDocument", rag_pb2.GetDocumentRequest(index_name="x"), "document_id"),
        ("DeleteDocument", rag_pb2.DeleteDocumentRequest(document_id="d"), "index_name"),
        ("ListDocuments", rag_pb2.ListDocumentsRequest(), "index_name"),
        ("Query", rag_pb2.QueryRequest(index_name="x"), "query"),
        (
            "Query",
            rag_pb2.QueryRequest(
                index_name="x", query="q", retrieval=rag_pb2.RetrievalOptions(top_k=500)
            ),
            "retrieval.top_k",
        ),
        (
            "Query",
            rag_pb2.QueryRequest(
                index_name="x",
                query="q",
                retrieval=rag_pb2.RetrievalOptions(
                    filter=rag_pb2.MetadataFilter(
                        condition=rag_pb2.MetadataCondition(
                            field="colour", equals=struct_pb2.Value(string_value="red")
                        )
                    )
                ),
            ),
            "retrieval.filter.condition.field",
        ),
        ("GetAnswer", rag_pb2.GetAnswerRequest(), "answer_id"),
        ("CancelAnswer", rag_pb2.CancelAnswerRequest(), "answer_id"),
    ],
)
async def test_bad_input_is_invalid_argument(rag, token, method, request_, field) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as error:
        await getattr(rag, method)(request_, metadata=auth(token))
    assert error.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert field in field_violations(error.value)


async def test_bad_input_on_streaming_rpcs(rag, token) -> None:
    cases = [
        (rag.Answer(rag_pb2.AnswerRequest(index_name="x"), metadata=auth(token)), "query"),
        (
            rag.Answer(
                rag_pb2.AnswerRequest(
                    index_name="x", query="q", context=rag_pb2.ContextOptions(max_tokens=5)
                ),
                metadata=auth(token),
            ),
            "context.max_tokens",
        ),
        (rag.WatchAnswer(rag_pb2.WatchAnswerRequest(), metadata=auth(token)), "answer_id"),
        (
            rag.WatchIngestion(rag_pb2.WatchIngestionRequest(), metadata=auth(token)),
            "ingestion_id",
        ),
    ]
    for call, field in cases:
        with pytest.raises(grpc.aio.AioRpcError) as error:
            async for _ in call:
                pass
        assert error.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert field in field_violations(error.value)

    async def no_header():
        yield rag_pb2.UploadDocumentRequest(chunk=b"abc")

    with pytest.raises(grpc.aio.AioRpcError) as error:
        await rag.UploadDocument(no_header(), metadata=auth(token))
    assert "header" in field_violations(error.value)
