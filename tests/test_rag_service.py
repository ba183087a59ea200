"""RagService end to end: real gRPC server, Temporal worker, Postgres + pgvector, Redis,
the local embedding model, and the scripted model server for answers."""

from __future__ import annotations

import asyncio
import hashlib
import os
import subprocess
import sys
from pathlib import Path

import grpc
import pytest
from google.protobuf import struct_pb2

from loomwork.rag.ingestion import derived_document_id
from loomwork.testing import ScriptedModelServer, Turn
from protos.loomwork.v1 import rag_pb2, rag_pb2_grpc, run_pb2
from tests.support import auth, field_violations, unique
from tests.test_rag_extract import minimal_pdf

FINISHED = (
    rag_pb2.INGESTION_STATUS_SUCCEEDED,
    rag_pb2.INGESTION_STATUS_PARTIALLY_SUCCEEDED,
    rag_pb2.INGESTION_STATUS_FAILED,
    rag_pb2.INGESTION_STATUS_CANCELED,
)

GUIDE = """# Loomwork guide

Loomwork runs durable agents on Temporal with memory and retrieval.

## Installing

Install the package with pip. The embedded stack starts Postgres, Valkey and Temporal.

## Troubleshooting

If the worker crashes, Temporal retries the activity on another worker. The error code
ZX-4471 means the vector index is still building; wait a minute and retry the query.
"""

ANIMALS = [
    "Cats are small domesticated carnivores that like to sleep in the sun.",
    "Dolphins are marine mammals known for their intelligence and playful behaviour.",
    "Eagles are birds of prey with sharp eyesight that hunt from great heights.",
    "Honeybees live in colonies and make honey from the nectar of flowers.",
]


@pytest.fixture(scope="module")
def rag(channel: grpc.aio.Channel) -> rag_pb2_grpc.RagServiceStub:
    return rag_pb2_grpc.RagServiceStub(channel)


async def create_index(rag: rag_pb2_grpc.RagServiceStub, token: str, **fields: object) -> str:
    name = unique("idx").replace("-", "_")
    await rag.CreateIndex(
        rag_pb2.CreateIndexRequest(index=rag_pb2.Index(name=name, **fields)),  # type: ignore[arg-type]
        metadata=auth(token),
    )
    return name


async def wait_ingestion(
    rag: rag_pb2_grpc.RagServiceStub, token: str, ingestion_id: str
) -> rag_pb2.Ingestion:
    async def watch() -> rag_pb2.Ingestion:
        async for response in rag.WatchIngestion(
            rag_pb2.WatchIngestionRequest(ingestion_id=ingestion_id), metadata=auth(token)
        ):
            if response.event.HasField("finished"):
                return response.event.finished
        raise AssertionError("stream ended without a finished event")

    return await asyncio.wait_for(watch(), timeout=120)


async def ingest(
    rag: rag_pb2_grpc.RagServiceStub,
    token: str,
    index: str,
    documents: list[rag_pb2.DocumentInput],
    **fields: object,
) -> rag_pb2.Ingestion:
    response = await rag.IngestDocuments(
        rag_pb2.IngestDocumentsRequest(index_name=index, documents=documents, **fields),  # type: ignore[arg-type]
        metadata=auth(token),
    )
    return await wait_ingestion(rag, token, response.ingestion.id)


def meta(**values: object) -> struct_pb2.Struct:
    out = struct_pb2.Struct()
    out.update(values)
    return out


async def test_index_lifecycle_and_validation(rag, token, other_token) -> None:
    name = await create_index(rag, token, description="docs")
    got = await rag.GetIndex(rag_pb2.GetIndexRequest(index_name=name), metadata=auth(token))
    assert got.index.embedding_model == "all-MiniLM-L6-v2"
    assert got.index.dimension == 384
    assert got.index.metric == rag_pb2.DISTANCE_METRIC_COSINE
    assert got.index.hnsw.m == 16 and got.index.text_search_config == "english"
    listed = await rag.ListIndexes(rag_pb2.ListIndexesRequest(), metadata=auth(token))
    assert name in [i.name for i in listed.indexes]

    with pytest.raises(grpc.aio.AioRpcError) as exists:
        await rag.CreateIndex(
            rag_pb2.CreateIndexRequest(index=rag_pb2.Index(name=name)), metadata=auth(token)
        )
    assert exists.value.code() == grpc.StatusCode.ALREADY_EXISTS
    # Another tenant sees nothing and may use the same name.
    with pytest.raises(grpc.aio.AioRpcError) as hidden:
        await rag.GetIndex(rag_pb2.GetIndexRequest(index_name=name), metadata=auth(other_token))
    assert hidden.value.code() == grpc.StatusCode.NOT_FOUND
    await rag.CreateIndex(
        rag_pb2.CreateIndexRequest(index=rag_pb2.Index(name=name)), metadata=auth(other_token)
    )

    bad = [
        (rag_pb2.Index(name="9bad"), "index.name"),
        (rag_pb2.Index(name="ok", dimension=128), "index.dimension"),
        (rag_pb2.Index(name="ok", hnsw=rag_pb2.HnswOptions(m=1)), "index.hnsw.m"),
        (rag_pb2.Index(name="ok", text_search_config="klingon"), "index.text_search_config"),
    ]
    for index, field in bad:
        with pytest.raises(grpc.aio.AioRpcError) as error:
            await rag.CreateIndex(rag_pb2.CreateIndexRequest(index=index), metadata=auth(token))
        assert error.value.code() == grpc.StatusCode.INVALID_ARGUMENT, field
        assert field in field_violations(error.value)

    await rag.DeleteIndex(rag_pb2.DeleteIndexRequest(index_name=name), metadata=auth(token))
    with pytest.raises(grpc.aio.AioRpcError) as gone:
        await rag.GetIndex(rag_pb2.GetIndexRequest(index_name=name), metadata=auth(token))
    assert gone.value.code() == grpc.StatusCode.NOT_FOUND


async def test_ingest_query_filters_and_citations(rag, token) -> None:
    index = await create_index(rag, token)
    documents = [
        rag_pb2.DocumentInput(
            document_id=f"animal-{i}",
            text=text,
            title=f"Animal {i}",
            metadata=meta(kind="mammal" if i < 2 else "other", year=2020 + i, tags=["zoo"]),
        )
        for i, text in enumerate(ANIMALS)
    ]
    documents.append(
        rag_pb2.DocumentInput(document_id="guide", data=GUIDE.encode(), file_name="guide.md")
    )
    done = await ingest(rag, token, index, documents)
    assert done.status == rag_pb2.INGESTION_STATUS_SUCCEEDED
    assert done.progress.documents_done == 5
    assert done.progress.chunks_done == done.progress.chunks_total > 0

    found = await rag.Query(
        rag_pb2.QueryRequest(index_name=index, query="Which animal lives in the sea?"),
        metadata=auth(token),
    )
    best = found.results[0]
    assert best.chunk.document_id == "animal-1"
    assert best.citation.number == 1 and best.citation.title == "Animal 1"
    assert 0 < best.score <= 1 and best.details.vector_rank == 1
    assert found.embedding_model == "all-MiniLM-L6-v2"

    async def ids(filter: rag_pb2.MetadataFilter) -> set[str]:
        response = await rag.Query(
            rag_pb2.QueryRequest(
                index_name=index,
                query="animals",
                retrieval=rag_pb2.RetrievalOptions(top_k=20, filter=filter),
            ),
            metadata=auth(token),
        )
        return {r.chunk.document_id for r in response.results}

    def cond(**kwargs: object) -> rag_pb2.MetadataFilter:
        return rag_pb2.MetadataFilter(condition=rag_pb2.MetadataCondition(**kwargs))  # type: ignore[arg-type]

    mammal = struct_pb2.Value(string_value="mammal")
    assert await ids(cond(field="metadata.kind", equals=mammal)) == {"animal-0", "animal-1"}
    assert await ids(
        cond(
            field="metadata.year",
            range=rag_pb2.MetadataRange(gte=struct_pb2.Value(number_value=2022)),
        )
    ) == {"animal-2", "animal-3"}
    any_of = struct_pb2.ListValue()
    any_of.extend(["animal-0", "animal-3"])
    assert await ids(cond(field="document_id", any_of=any_of)) == {"animal-0", "animal-3"}
    assert await ids(cond(field="metadata.kind", exists=False)) == {"guide"}
    zoo = struct_pb2.Value(string_value="zoo")
    assert "guide" not in await ids(cond(field="metadata.tags", equals=zoo))
    both = rag_pb2.MetadataFilter(
        all=rag_pb2.MetadataFilterList(
            filters=[
                cond(field="metadata.kind", equals=mammal),
                cond(field="page", equals=struct_pb2.Value(number_value=0)),
            ]
        )
    )
    assert await ids(both) == {"animal-0", "animal-1"}

    # Documents: get, list with a filter, delete removes chunks.
    doc = await rag.GetDocument(
        rag_pb2.GetDocumentRequest(index_name=index, document_id="guide"), metadata=auth(token)
    )
    assert doc.document.format == rag_pb2.DOCUMENT_FORMAT_MARKDOWN
    assert doc.document.title == "Loomwork guide"
    assert doc.document.status == rag_pb2.DOCUMENT_STATUS_READY
    assert doc.document.content_hash == hashlib.sha256(GUIDE.encode()).hexdigest()
    listed = await rag.ListDocuments(
        rag_pb2.ListDocumentsRequest(
            index_name=index, page_size=2, filter=cond(field="metadata.kind", equals=mammal)
        ),
        metadata=auth(token),
    )
    assert [d.id for d in listed.documents] == ["animal-0", "animal-1"]
    await rag.DeleteDocument(
        rag_pb2.DeleteDocumentRequest(index_name=index, document_id="animal-1"),
        metadata=auth(token),
    )
    after = await rag.Query(
        rag_pb2.QueryRequest(index_name=index, query="Which animal lives in the sea?"),
        metadata=auth(token),
    )
    assert "animal-1" not in {r.chunk.document_id for r in after.results}
    info = await rag.GetIndex(rag_pb2.GetIndexRequest(index_name=index), metadata=auth(token))
    assert info.index.document_count == 4


async def test_hybrid_beats_vector_on_exact_keyword(rag, token) -> None:
    index = await create_index(rag, token)
    filler = [
        f"Error codes of the storage engine are documented in chapter {i}; each error has a"
        f" code, a cause and a fix, and most storage errors resolve by retrying later."
        for i in range(12)
    ]
    documents = [rag_pb2.DocumentInput(document_id=f"f{i}", text=t) for i, t in enumerate(filler)]
    documents.append(rag_pb2.DocumentInput(document_id="guide", text=GUIDE))
    await ingest(rag, token, index, documents)

    async def rank(mode: int) -> int:
        response = await rag.Query(
            rag_pb2.QueryRequest(
                index_name=index,
                query="what does error ZX-4471 mean",
                retrieval=rag_pb2.RetrievalOptions(top_k=13, mode=mode),  # type: ignore[arg-type]
            ),
            metadata=auth(token),
        )
        ids = [r.chunk.document_id for r in response.results]
        return ids.index("guide") + 1 if "guide" in ids else 99

    vector_rank = await rank(rag_pb2.SEARCH_MODE_VECTOR)
    hybrid_rank = await rank(rag_pb2.SEARCH_MODE_HYBRID)
    # The rare exact code lifts the passage from last by meaning to the top few.
    assert vector_rank == 13
    assert hybrid_rank < vector_rank and hybrid_rank <= 6

    reranked = await rag.Query(
        rag_pb2.QueryRequest(
            index_name=index,
            query="what does error ZX-4471 mean",
            retrieval=rag_pb2.RetrievalOptions(
                top_k=3,
                mode=rag_pb2.SEARCH_MODE_HYBRID,
                rerank=rag_pb2.RerankOptions(method=rag_pb2.RERANK_METHOD_SIGNALS),
                min_score=0.05,
            ),
        ),
        metadata=auth(token),
    )
    assert reranked.results[0].chunk.document_id == "guide"
    assert reranked.results[0].details.rerank_score == pytest.approx(reranked.results[0].score)
    assert all(r.score >= 0.05 for r in reranked.results)


async def test_duplicate_and_replace_semantics(rag, token) -> None:
    index = await create_index(rag, token)
    first = await ingest(rag, token, index, [rag_pb2.DocumentInput(document_id="d", text=GUIDE)])
    assert first.documents[0].status == rag_pb2.INGESTION_DOCUMENT_STATUS_SUCCEEDED
    chunks = (
        await rag.GetIndex(rag_pb2.GetIndexRequest(index_name=index), metadata=auth(token))
    ).index.chunk_count
    again = await ingest(rag, token, index, [rag_pb2.DocumentInput(document_id="d", text=GUIDE)])
    assert again.documents[0].status == rag_pb2.INGESTION_DOCUMENT_STATUS_UNCHANGED
    info = await rag.GetIndex(rag_pb2.GetIndexRequest(index_name=index), metadata=auth(token))
    assert info.index.chunk_count == chunks

    changed = await ingest(
        rag, token, index, [rag_pb2.DocumentInput(document_id="d", text="Only one short line now.")]
    )
    assert changed.documents[0].status == rag_pb2.INGESTION_DOCUMENT_STATUS_SUCCEEDED
    info = await rag.GetIndex(rag_pb2.GetIndexRequest(index_name=index), metadata=auth(token))
    assert info.index.chunk_count == 1 and info.index.document_count == 1
    result = await rag.Query(
        rag_pb2.QueryRequest(index_name=index, query="Temporal retries"), metadata=auth(token)
    )
    assert [r.chunk.text for r in result.results] == ["Only one short line now."]

    # Without an id, the id is derived from the content: the same bytes never duplicate.
    derived = await ingest(rag, token, index, [rag_pb2.DocumentInput(text="Same text twice.")])
    repeat = await ingest(rag, token, index, [rag_pb2.DocumentInput(text="Same text twice.")])
    assert derived.documents[0].document_id == repeat.documents[0].document_id
    assert derived.documents[0].document_id.startswith("doc_")
    assert repeat.documents[0].status == rag_pb2.INGESTION_DOCUMENT_STATUS_UNCHANGED


async def test_bad_documents_fail_alone_and_pdf_pages(rag, token) -> None:
    index = await create_index(rag, token)
    pdf = minimal_pdf(["The first page talks about apples.", "The second page is about pears."])
    done = await ingest(
        rag,
        token,
        index,
        [
            rag_pb2.DocumentInput(document_id="good", data=pdf, file_name="fruit.pdf"),
            rag_pb2.DocumentInput(document_id="broken", data=b"%PDF-1.7 broken", file_name="x.pdf"),
            rag_pb2.DocumentInput(document_id="binary", data=bytes(range(256)) * 4),
        ],
        chunking=rag_pb2.ChunkingOptions(strategy=rag_pb2.CHUNKING_STRATEGY_MARKDOWN),
    )
    assert done.status == rag_pb2.INGESTION_STATUS_PARTIALLY_SUCCEEDED
    states = {d.document_id: d for d in done.documents}
    assert states["good"].status == rag_pb2.INGESTION_DOCUMENT_STATUS_SUCCEEDED
    assert states["good"].page_count == 2
    assert states["broken"].error.reason == "DOCUMENT_CORRUPT"
    assert states["binary"].error.reason == "UNSUPPORTED_FORMAT"
    failed = await rag.GetDocument(
        rag_pb2.GetDocumentRequest(index_name=index, document_id="broken"), metadata=auth(token)
    )
    assert failed.document.status == rag_pb2.DOCUMENT_STATUS_FAILED
    hit = await rag.Query(
        rag_pb2.QueryRequest(index_name=index, query="pears"), metadata=auth(token)
    )
    assert hit.results[0].chunk.page == 2 and hit.results[0].citation.page == 2


async def test_upload_watch_and_list(rag, token) -> None:
    index = await create_index(rag, token)
    data = ("\n\n".join(f"Paragraph {i} about rivers and lakes." for i in range(400))).encode()

    async def requests():
        yield rag_pb2.UploadDocumentRequest(
            header=rag_pb2.UploadDocumentHeader(
                index_name=index,
                document=rag_pb2.DocumentInput(document_id="big", file_name="big.txt"),
                size_bytes=len(data),
                sha256=hashlib.sha256(data).hexdigest(),
                chunking=rag_pb2.ChunkingOptions(
                    strategy=rag_pb2.CHUNKING_STRATEGY_SENTENCE, chunk_size=100
                ),
            )
        )
        for start in range(0, len(data), 1000):
            yield rag_pb2.UploadDocumentRequest(chunk=data[start : start + 1000])

    started = await rag.UploadDocument(requests(), metadata=auth(token))
    ingestion_id = started.ingestion.id
    assert started.ingestion.temporal_workflow_id == f"rag/{index}/alpha/{ingestion_id}"
    events = []
    async for response in rag.WatchIngestion(
        rag_pb2.WatchIngestionRequest(ingestion_id=ingestion_id), metadata=auth(token)
    ):
        events.append(response.event)
    ids = [e.event_id for e in events]
    assert ids == list(range(1, len(ids) + 1))
    final = events[-1].finished
    assert final.status == rag_pb2.INGESTION_STATUS_SUCCEEDED
    assert final.progress.chunks_done == final.progress.chunks_total > 64  # several batches
    done_counts = [e.progress.chunks_done for e in events]
    assert done_counts == sorted(done_counts)

    # Resume after an event: the rest, no gap, no duplicate.
    rest = [
        r.event.event_id
        async for r in rag.WatchIngestion(
            rag_pb2.WatchIngestionRequest(ingestion_id=ingestion_id, after_event_id=3),
            metadata=auth(token),
        )
    ]
    assert rest == ids[3:]
    got = await rag.GetIngestion(
        rag_pb2.GetIngestionRequest(ingestion_id=ingestion_id), metadata=auth(token)
    )
    assert got.ingestion.last_event_id == ids[-1]
    listed = await rag.ListIngestions(
        rag_pb2.ListIngestionsRequest(index_name=index), metadata=auth(token)
    )
    assert [i.id for i in listed.ingestions] == [ingestion_id]

    with pytest.raises(grpc.aio.AioRpcError) as mismatch:

        async def wrong():
            yield rag_pb2.UploadDocumentRequest(
                header=rag_pb2.UploadDocumentHeader(index_name=index, size_bytes=5)
            )
            yield rag_pb2.UploadDocumentRequest(chunk=b"abc")

        await rag.UploadDocument(wrong(), metadata=auth(token))
    assert "header.size_bytes" in field_violations(mismatch.value)


async def test_answer_whose_first_start_failed_is_started_by_the_repeat(
    rag, token, model_server: ScriptedModelServer, runtime
) -> None:
    """The first call stored the answer, then failed to start its run: the repeat (same
    client_answer_id) starts it instead of following a log no run will ever write."""
    from loomwork.rag.answer import AnswerRecord
    from server.servicers.rag import answer_workflow_id

    index = await create_index(rag, token)
    await ingest(rag, token, index, [rag_pb2.DocumentInput(document_id="a1", text=ANIMALS[1])])
    answer_id = unique("ans")
    query = "Which animal lives in the sea?"
    await runtime.rag.answers.create(
        "alpha",
        AnswerRecord(
            id=answer_id,
            index_name=index,
            query=query,
            model="scripted",
            workflow_id=answer_workflow_id(index, "alpha", answer_id),
        ),
    )
    model_server.push(Turn(text="Dolphins [1]."))
    request = rag_pb2.AnswerRequest(index_name=index, query=query, client_answer_id=answer_id)
    events = await asyncio.wait_for(_collect_answer(rag.Answer(request, metadata=auth(token))), 60)
    assert events[-1].HasField("finished")
    assert events[-1].finished.text == "Dolphins [1]."


async def test_finish_retried_after_its_status_was_saved_still_ends_the_log(
    rag, token, model_server: ScriptedModelServer, runtime
) -> None:
    """An ingestion's or an answer's finish retried after it saved the final status but
    before its terminal event was published (the worker gone, Redis refused): the retry
    publishes it, so the streams that follow the log end, and records its id."""
    from loomwork.rag.answer import AnswerRequest, answer_log_key
    from loomwork.rag.ingestion import IngestionRequest, ingestion_log_key

    index = await create_index(rag, token)
    done = await ingest(rag, token, index, [rag_pb2.DocumentInput(document_id="a1", text="x")])
    model_server.push(Turn(text="Fine."))
    answered = [
        r.event
        async for r in rag.Answer(
            rag_pb2.AnswerRequest(index_name=index, query="q?", client_answer_id=unique("ans")),
            metadata=auth(token),
        )
    ]
    answer_id = answered[-1].finished.id
    ingestion_key = ingestion_log_key("alpha", done.id)
    answer_key = answer_log_key("alpha", answer_id)
    async with runtime.db.connection() as conn:
        for table, row_id in (("rag_ingestions", done.id), ("rag_answers", answer_id)):
            await conn.execute(
                f"update {table} set record = jsonb_set(record, '{{terminal_event_id}}', '0')"
                " where tenant_id = 'alpha' and id = %s",
                (row_id,),
            )
    for key in (ingestion_key, answer_key):
        await runtime.redis.delete(runtime.events.meta_key(key), runtime.events.stream_key(key))

    ingestion = await runtime.rag.ingestion.finish(
        IngestionRequest(tenant="alpha", ingestion_id=done.id, index_name=index, document_count=1)
    )
    assert ingestion.status == "succeeded" and ingestion.terminal_event_id == 1
    assert await runtime.events.is_finished(ingestion_key)
    answer = await runtime.rag.answers.finish(
        AnswerRequest(tenant="alpha", answer_id=answer_id, index_name=index, query="q?"),
        None,
        "succeeded",
    )
    assert answer.status == "succeeded" and answer.terminal_event_id == 1
    assert await runtime.events.is_finished(answer_key)
    assert (await runtime.rag.answers.get("alpha", answer_id)).terminal_event_id == 1


async def _collect_answer(stream) -> list[rag_pb2.AnswerEvent]:  # type: ignore[no-untyped-def]
    return [response.event async for response in stream]


async def test_answer_streams_with_citations(rag, token, model_server: ScriptedModelServer) -> None:
    index = await create_index(rag, token)
    await ingest(
        rag,
        token,
        index,
        [rag_pb2.DocumentInput(document_id=f"a{i}", text=t) for i, t in enumerate(ANIMALS)],
    )
    model_server.push(Turn(text="Dolphins live in the sea [1]. Bees make honey [2]."))
    events = [
        r.event
        async for r in rag.Answer(
            rag_pb2.AnswerRequest(
                index_name=index,
                query="Which animal lives in the sea?",
                retrieval=rag_pb2.RetrievalOptions(top_k=2),
                client_answer_id=unique("ans"),
            ),
            metadata=auth(token),
        )
    ]
    kinds = [e.WhichOneof("event") for e in events]
    assert kinds[0] == "started" and kinds[1] == "retrieval" and kinds[-1] == "finished"
    assert [e.event_id for e in events] == list(range(1, len(events) + 1))
    text = "".join(e.text_delta.text for e in events if e.HasField("text_delta"))
    assert text == "Dolphins live in the sea [1]. Bees make honey [2]."
    retrieval = events[1].retrieval
    citations = [e.citation for e in events if e.HasField("citation")]
    assert [c.number for c in citations] == [1, 2]
    assert citations[0].chunk_id == retrieval.chunks[0].chunk.id
    assert retrieval.chunks[0].chunk.document_id == "a1"
    final = events[-1].finished
    assert final.status == run_pb2.RUN_STATUS_SUCCEEDED and final.text == text
    # The model saw the numbered context.
    system = model_server.requests[-1].messages[0]["content"]
    assert "[1]" in system and "Dolphins" in system

    got = await rag.GetAnswer(rag_pb2.GetAnswerRequest(answer_id=final.id), metadata=auth(token))
    assert got.answer.text == text and got.answer.last_event_id == events[-1].event_id
    replay = [
        r.event.event_id
        async for r in rag.WatchAnswer(
            rag_pb2.WatchAnswerRequest(answer_id=final.id, after_event_id=2), metadata=auth(token)
        )
    ]
    assert replay == [e.event_id for e in events[2:]]
    with pytest.raises(grpc.aio.AioRpcError) as ended:
        await rag.CancelAnswer(
            rag_pb2.CancelAnswerRequest(answer_id=final.id), metadata=auth(token)
        )
    assert ended.value.code() == grpc.StatusCode.FAILED_PRECONDITION


async def test_tenant_isolation(rag, token, other_token) -> None:
    index = await create_index(rag, token)
    done = await ingest(
        rag, token, index, [rag_pb2.DocumentInput(document_id="s", text=ANIMALS[0])]
    )
    calls = [
        rag.Query(rag_pb2.QueryRequest(index_name=index, query="cats"), metadata=auth(other_token)),
        rag.GetDocument(
            rag_pb2.GetDocumentRequest(index_name=index, document_id="s"),
            metadata=auth(other_token),
        ),
        rag.GetIngestion(
            rag_pb2.GetIngestionRequest(ingestion_id=done.id), metadata=auth(other_token)
        ),
        rag.DeleteIndex(rag_pb2.DeleteIndexRequest(index_name=index), metadata=auth(other_token)),
    ]
    for call in calls:
        with pytest.raises(grpc.aio.AioRpcError) as error:
            await call
        assert error.value.code() == grpc.StatusCode.NOT_FOUND


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


async def test_cancel_ingestion(rag, token) -> None:
    index = await create_index(rag, token)
    documents = [
        rag_pb2.DocumentInput(
            document_id=f"d{i}",
            text="\n\n".join(f"Document {i} paragraph {j} about tides." for j in range(40)),
        )
        for i in range(30)
    ]
    started = await rag.IngestDocuments(
        rag_pb2.IngestDocumentsRequest(
            index_name=index,
            documents=documents,
            chunking=rag_pb2.ChunkingOptions(chunk_size=60),
        ),
        metadata=auth(token),
    )
    canceled = await rag.CancelIngestion(
        rag_pb2.CancelIngestionRequest(ingestion_id=started.ingestion.id), metadata=auth(token)
    )
    assert canceled.ingestion.id == started.ingestion.id
    final = await wait_ingestion(rag, token, started.ingestion.id)
    assert final.status == rag_pb2.INGESTION_STATUS_CANCELED
    statuses = {d.status for d in final.documents}
    assert rag_pb2.INGESTION_DOCUMENT_STATUS_CANCELED in statuses
    # Documents already upserted stay; canceling again is a no-op.
    again = await rag.CancelIngestion(
        rag_pb2.CancelIngestionRequest(ingestion_id=started.ingestion.id), metadata=auth(token)
    )
    assert again.ingestion.status == rag_pb2.INGESTION_STATUS_CANCELED
    done = await ingest(rag, token, index, [rag_pb2.DocumentInput(document_id="x", text="hi")])
    with pytest.raises(grpc.aio.AioRpcError) as ended:
        await rag.CancelIngestion(
            rag_pb2.CancelIngestionRequest(ingestion_id=done.id), metadata=auth(token)
        )
    assert ended.value.code() == grpc.StatusCode.FAILED_PRECONDITION


async def test_llm_rerank_and_client_ingestion_id(
    rag, token, model_server: ScriptedModelServer, runtime
) -> None:
    index = await create_index(rag, token)
    key = unique("ing")
    request = rag_pb2.IngestDocumentsRequest(
        index_name=index,
        documents=[
            rag_pb2.DocumentInput(document_id=f"a{i}", text=t) for i, t in enumerate(ANIMALS)
        ],
        client_ingestion_id=key,
    )
    first = await rag.IngestDocuments(request, metadata=auth(token))
    second = await rag.IngestDocuments(request, metadata=auth(token))
    assert first.ingestion.id == second.ingestion.id == key
    done = await wait_ingestion(rag, token, key)
    # Repeated once it has finished: the same ingestion as it ended, not run again.
    handle = runtime.temporal.get_workflow_handle(done.temporal_workflow_id)
    ended = (await handle.describe()).run_id
    third = await rag.IngestDocuments(request, metadata=auth(token))
    assert third.ingestion.id == key
    assert third.ingestion.status == rag_pb2.INGESTION_STATUS_SUCCEEDED
    assert (await handle.describe()).run_id == ended  # no second execution
    listed = await rag.ListIngestions(
        rag_pb2.ListIngestionsRequest(index_name=index), metadata=auth(token)
    )
    assert len(listed.ingestions) == 1

    # The model scores the candidates (in first-stage order); its scores decide the order.
    model_server.push(Turn(text='{"scores": [0.1, 0.2, 0.3, 0.95]}'))
    response = await rag.Query(
        rag_pb2.QueryRequest(
            index_name=index,
            query="Which animal lives in the sea?",
            retrieval=rag_pb2.RetrievalOptions(
                top_k=4,
                rerank=rag_pb2.RerankOptions(method=rag_pb2.RERANK_METHOD_LLM, candidates=4),
            ),
        ),
        metadata=auth(token),
    )
    assert response.results[0].score == pytest.approx(0.95)
    assert response.results[0].details.rerank_score == pytest.approx(0.95)
    assert response.results[0].details.vector_rank == 4


def _worker_process(embedded: dict[str, str], queue: str, log: Path) -> subprocess.Popen[bytes]:
    """`loomwork worker` as its own process on `queue`, against the session's servers."""
    return subprocess.Popen(
        [sys.executable, "-m", "server.cli", "worker"],
        cwd=Path(__file__).resolve().parent.parent,
        env=dict(
            os.environ,
            DATABASE_URL=embedded["DATABASE_URL"],
            REDIS_URL=embedded["REDIS_URL"],
            TEMPORAL_ADDRESS=embedded["TEMPORAL_ADDRESS"],
            LOOMWORK_TASK_QUEUE=queue,
        ),
        stdout=log.open("wb"),
        stderr=subprocess.STDOUT,
    )


async def test_worker_killed_mid_ingestion_finishes_with_every_chunk_once(
    rag, token, runtime, embedded, tmp_path
) -> None:
    """A worker process SIGKILLed in the middle of an ingestion is replaced by another; the run
    resumes at its batch and ends with each chunk stored exactly once."""
    import signal
    from datetime import timedelta

    from temporalio.worker import Worker

    from activities.rag import RagActivities
    from loomwork.rag.ingestion import (
        IngestionDocumentState,
        IngestionRecord,
        IngestionRequest,
        SourceDocument,
    )
    from workflows.ingestion import IngestionWorkflow

    system = runtime.rag
    index = await create_index(rag, token)
    queue = unique("rag-kill")
    ingestion_id = unique("ing")
    texts = [
        "\n\n".join(f"Doc {d} paragraph {p} on harbours and ships." for p in range(150))
        for d in range(4)
    ]
    record = IngestionRecord(
        id=ingestion_id,
        tenant="alpha",
        index_name=index,
        documents=[IngestionDocumentState(document_id=f"k{d}") for d in range(4)],
        sources=[SourceDocument(document_id=f"k{d}") for d in range(4)],
        workflow_id=f"rag/{index}/alpha/{ingestion_id}",
    )
    record.chunking.chunk_size = 60
    await system.ingestion.create(record, [t.encode() for t in texts])

    doomed = _worker_process(embedded, queue, tmp_path / "doomed-worker.log")
    log = tmp_path / "doomed-worker.log"
    try:
        handle = await runtime.temporal.start_workflow(
            IngestionWorkflow.run,
            IngestionRequest(
                tenant="alpha",
                ingestion_id=ingestion_id,
                index_name=index,
                document_count=4,
                batch_size=16,
            ),
            id=record.workflow_id,
            task_queue=queue,
        )
        for _ in range(1200):  # until some, not all, chunks are embedded
            assert doomed.poll() is None, log.read_text()
            current = await system.ingestion.get("alpha", ingestion_id)
            if current.progress.chunks_done >= 32:
                break
            await asyncio.sleep(0.05)
        doomed.send_signal(signal.SIGKILL)  # mid-batch, no chance to clean up
        doomed.wait(10)
    finally:
        if doomed.poll() is None:
            doomed.kill()
    stopped = await system.ingestion.get("alpha", ingestion_id)
    assert stopped.status == "running"
    assert 0 < stopped.progress.chunks_done < stopped.progress.chunks_total

    second = Worker(
        runtime.temporal,
        task_queue=queue,
        workflows=[IngestionWorkflow],
        activities=RagActivities(system.ingestion, system.answers).all(),
        sticky_queue_schedule_to_start_timeout=timedelta(seconds=1),
        identity="replacement",
    )
    second_task = asyncio.create_task(second.run())
    try:
        final = await asyncio.wait_for(handle.result(), timeout=180)
    finally:
        await second.shutdown()
        await second_task
    assert final.status == "succeeded"
    assert final.progress.chunks_done == final.progress.chunks_total > 200
    info = await rag.GetIndex(rag_pb2.GetIndexRequest(index_name=index), metadata=auth(token))
    assert info.index.chunk_count == final.progress.chunks_total
    assert info.index.document_count == 4


async def test_watch_after_events_expired_sends_the_finished_event(rag, token, runtime) -> None:
    from loomwork.rag.ingestion import ingestion_log_key

    index = await create_index(rag, token)
    response = await rag.IngestDocuments(
        rag_pb2.IngestDocumentsRequest(
            index_name=index, documents=[rag_pb2.DocumentInput(text=ANIMALS[0])]
        ),
        metadata=auth(token),
    )
    ingestion_id = response.ingestion.id
    every = [
        r.event
        async for r in rag.WatchIngestion(
            rag_pb2.WatchIngestionRequest(ingestion_id=ingestion_id), metadata=auth(token)
        )
    ]
    finished = every[-1]
    assert finished.HasField("finished")
    # What the retention TTL does a day after the ingestion ended (its record notes the
    # terminal id once the event is out, a moment after the stream saw it).
    got = await rag.GetIngestion(
        rag_pb2.GetIngestionRequest(ingestion_id=ingestion_id), metadata=auth(token)
    )
    await runtime.temporal.get_workflow_handle(got.ingestion.temporal_workflow_id).result()
    key = ingestion_log_key("alpha", ingestion_id)
    await runtime.redis.delete(runtime.events.meta_key(key), runtime.events.stream_key(key))
    rebuilt = [
        r.event
        async for r in rag.WatchIngestion(
            rag_pb2.WatchIngestionRequest(ingestion_id=ingestion_id), metadata=auth(token)
        )
    ]
    assert [e.event_id for e in rebuilt] == [finished.event_id]
    assert rebuilt[0].finished.status == rag_pb2.INGESTION_STATUS_SUCCEEDED
    assert rebuilt[0].progress == finished.progress
    got = await rag.GetIngestion(
        rag_pb2.GetIngestionRequest(ingestion_id=ingestion_id), metadata=auth(token)
    )
    assert got.ingestion.last_event_id == finished.event_id


async def test_watch_answer_after_events_expired_sends_the_terminal_event(
    rag, token, runtime, model_server: ScriptedModelServer
) -> None:
    from loomwork.rag.answer import answer_log_key

    index = await create_index(rag, token)
    await ingest(rag, token, index, [rag_pb2.DocumentInput(document_id="d", text=ANIMALS[1])])
    model_server.push(Turn(text="Dolphins live in the sea [1]."))
    answer_id = unique("ans")
    events = [
        r.event
        async for r in rag.Answer(
            rag_pb2.AnswerRequest(index_name=index, query="sea?", client_answer_id=answer_id),
            metadata=auth(token),
        )
    ]
    terminal = events[-1]
    assert terminal.HasField("finished")
    # Events expire long after the answer's run ended (its record notes the terminal id once
    # the terminal event is out, a moment after the stream saw it).
    started = await rag.GetAnswer(
        rag_pb2.GetAnswerRequest(answer_id=answer_id), metadata=auth(token)
    )
    await runtime.temporal.get_workflow_handle(started.answer.temporal_workflow_id).result()
    key = answer_log_key("alpha", answer_id)
    await runtime.redis.delete(runtime.events.meta_key(key), runtime.events.stream_key(key))

    async def watch(after: int) -> list[rag_pb2.AnswerEvent]:
        stream = rag.WatchAnswer(
            rag_pb2.WatchAnswerRequest(answer_id=answer_id, after_event_id=after),
            metadata=auth(token),
        )
        return [r.event async for r in stream]

    rebuilt = await asyncio.wait_for(watch(0), 30)
    assert [e.event_id for e in rebuilt] == [terminal.event_id]
    assert rebuilt[0].finished.text == "Dolphins live in the sea [1]."
    assert await asyncio.wait_for(watch(terminal.event_id), 30) == []
    got = await rag.GetAnswer(rag_pb2.GetAnswerRequest(answer_id=answer_id), metadata=auth(token))
    assert got.answer.last_event_id == terminal.event_id


async def test_upload_is_assembled_in_postgres_and_leaves_no_parts(rag, token, runtime) -> None:
    """Parts are stored as they arrive and assembled byte-exact; a rejected upload's parts
    are dropped."""
    index = await create_index(rag, token)
    data = ("\n\n".join(f"Line {i}: tides and currents." for i in range(300))).encode()

    def upload(header: rag_pb2.UploadDocumentHeader):
        async def requests():
            yield rag_pb2.UploadDocumentRequest(header=header)
            for start in range(0, len(data), 777):
                yield rag_pb2.UploadDocumentRequest(chunk=data[start : start + 777])

        return rag.UploadDocument(requests(), metadata=auth(token))

    started = await upload(
        rag_pb2.UploadDocumentHeader(
            index_name=index, document=rag_pb2.DocumentInput(file_name="tides.txt")
        )
    )
    done = await wait_ingestion(rag, token, started.ingestion.id)
    assert done.status == rag_pb2.INGESTION_STATUS_SUCCEEDED
    document = done.documents[0]
    assert document.document_id == derived_document_id(data)  # the digest of every part

    with pytest.raises(grpc.aio.AioRpcError) as err:
        await upload(
            rag_pb2.UploadDocumentHeader(index_name=index, sha256=hashlib.sha256(b"x").hexdigest())
        )
    assert "header.sha256" in field_violations(err.value)
    async with runtime.db.connection() as conn:
        cur = await conn.execute(
            "select count(*) as n from rag_upload_parts where tenant_id = 'alpha'"
        )
        assert (await cur.fetchone())["n"] == 0
