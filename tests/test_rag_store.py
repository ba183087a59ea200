"""The RAG store, filters, retrieval, ingestion steps and context assembly on the real
Postgres + pgvector and the local embedding model (no gRPC, no Temporal)."""

from __future__ import annotations

import dataclasses

import psycopg
import pytest

from loomwork.errors import InvalidArgument, NotFound
from loomwork.llm.chat import ChatUsage
from loomwork.messages import ToolCallPart
from loomwork.rag.answer_context import ContextOrder, assemble_rag_context
from loomwork.rag.ingestion_models import (
    IngestionDocumentState,
    IngestionRecord,
    IngestionRequest,
    SourceDocument,
)
from loomwork.rag.models import (
    Chunk,
    Condition,
    DocumentFormat,
    DocumentRecord,
    Filter,
    IndexSpec,
    Range,
    RerankMethod,
    RerankOptions,
    RetrievalOptions,
    ScoredChunk,
)
from loomwork.rag.rerank import signal_rerank
from loomwork.rag.store import vector_literal
from loomwork.rag.system import RagSystem
from loomwork.rag.tool import RAG_QUERY_TOOL
from loomwork.tools import ToolContext
from server.runtime import Runtime
from tests.support import unique


@pytest.fixture(scope="module")
def rag(runtime: Runtime) -> RagSystem:
    assert runtime.rag is not None
    return runtime.rag


async def make_index(rag: RagSystem, tenant: str = "store-t") -> str:
    name = unique("s").replace("-", "_")
    await rag.store.create_index(
        tenant, IndexSpec(name=name, embedding_model="all-MiniLM-L6-v2", dimension=384)
    )
    return name


async def put(rag: RagSystem, tenant: str, index_name: str, doc_id: str, texts: list[str], **meta):
    index = await rag.store.get_index(tenant, index_name)
    chunks = [
        Chunk(id=f"chk_{doc_id}_{i}", document_id=doc_id, position=i, text=t, metadata=meta)
        for i, t in enumerate(texts)
    ]
    vectors = await (await rag.embedders.get(index.embedding_model)).embed(texts)
    record = DocumentRecord(
        id=doc_id,
        index_name=index_name,
        title=doc_id,
        format=DocumentFormat.PLAIN_TEXT,
        metadata=meta,
        content_hash=doc_id,
    )
    await rag.store.commit_document(index, record, chunks, [vector_literal(v) for v in vectors])


async def test_replace_is_atomic_and_delete_removes_chunks(rag: RagSystem) -> None:
    tenant = "store-t"
    name = await make_index(rag, tenant)
    await put(rag, tenant, name, "doc", ["old one", "old two"])
    index = await rag.store.get_index(tenant, name)
    assert index.chunk_count == 2 and index.document_count == 1
    # A commit that fails half-way (a vector of the wrong dimension) changes nothing.
    bad = DocumentRecord(id="doc", index_name=name, format=DocumentFormat.PLAIN_TEXT)
    with pytest.raises(psycopg.Error):
        await rag.store.commit_document(
            index,
            bad,
            [
                Chunk(id="n0", document_id="doc", position=0, text="new"),
                Chunk(id="n1", document_id="doc", position=1, text="new"),
            ],
            [vector_literal([0.1] * 384), "[1,2,3"],
        )
    results, _ = await rag.retriever.search(tenant, name, "old", RetrievalOptions(top_k=5))
    assert sorted(r.chunk.text for r in results) == ["old one", "old two"]
    await put(rag, tenant, name, "doc", ["brand new"])
    results, _ = await rag.retriever.search(tenant, name, "old", RetrievalOptions(top_k=5))
    assert [r.chunk.text for r in results] == ["brand new"]
    await rag.store.delete_document(tenant, name, "doc")
    assert (await rag.store.get_index(tenant, name)).chunk_count == 0
    with pytest.raises(NotFound):
        await rag.store.delete_document(tenant, name, "doc")


async def test_filters_on_real_metadata(rag: RagSystem) -> None:
    tenant = "store-t"
    name = await make_index(rag, tenant)
    await put(rag, tenant, name, "a", ["alpha text"], year=2020, tags=["x", "y"], lang="en")
    await put(rag, tenant, name, "b", ["beta text"], year=2024, tags=["z"], lang="de")
    await put(rag, tenant, name, "c", ["gamma text"], date="2025-03-01")

    async def ids(condition: Condition) -> set[str]:
        results, _ = await rag.retriever.search(
            tenant, name, "text", RetrievalOptions(top_k=10, filter=Filter(condition=condition))
        )
        return {r.chunk.document_id for r in results}

    assert await ids(Condition(field="metadata.tags", op="equals", value="y")) == {"a"}
    assert await ids(Condition(field="metadata.tags", op="not_equals", value="y")) == {"b", "c"}
    assert await ids(Condition(field="metadata.lang", op="none_of", value=["en"])) == {"b", "c"}
    assert await ids(Condition(field="metadata.year", op="any_of", value=[2024, 1999])) == {"b"}
    assert await ids(Condition(field="metadata.year", op="range", value=Range(lt=2024))) == {"a"}
    assert await ids(Condition(field="metadata.year", op="equals", value="2020")) == set()
    assert await ids(
        Condition(field="metadata.date", op="range", value=Range(gte="2025-01-01", lt="2026"))
    ) == {"c"}
    assert await ids(Condition(field="metadata.year", op="exists", value=True)) == {"a", "b"}
    either = Filter(
        any=[
            Filter(condition=Condition(field="metadata.lang", op="equals", value="de")),
            Filter(condition=Condition(field="document_id", op="equals", value="c")),
        ]
    )
    results, _ = await rag.retriever.search(tenant, name, "text", RetrievalOptions(filter=either))
    assert {r.chunk.document_id for r in results} == {"b", "c"}
    with pytest.raises(InvalidArgument):
        await ids(Condition(field="metadata.year", op="range", value=Range(gt=1, lt="x")))


async def test_vector_search_uses_the_index_hnsw(rag: RagSystem, runtime: Runtime) -> None:
    tenant = "store-t"
    name = await make_index(rag, tenant)
    index = await rag.store.get_index(tenant, name)
    async with runtime.db.connection() as conn:
        cur = await conn.execute(
            "select indexdef from pg_indexes where indexname = %s", (f"rag_chunks_hnsw_{index.id}",)
        )
        row = await cur.fetchone()
    assert row is not None
    assert "hnsw" in row["indexdef"] and "vector_cosine_ops" in row["indexdef"]
    assert f"index_id = {index.id}" in row["indexdef"]
    await rag.store.delete_index(tenant, name)
    async with runtime.db.connection() as conn:
        cur = await conn.execute(
            "select 1 from pg_indexes where indexname = %s", (f"rag_chunks_hnsw_{index.id}",)
        )
        assert await cur.fetchone() is None


async def test_tenants_never_see_each_other(rag: RagSystem) -> None:
    name = await make_index(rag, "tenant-one")
    await put(rag, "tenant-one", name, "secret", ["the launch code is 1234"])
    with pytest.raises(NotFound):
        await rag.retriever.search("tenant-two", name, "launch code", RetrievalOptions())
    # Same name in another tenant is another index, with nothing in it.
    await rag.store.create_index(
        "tenant-two", IndexSpec(name=name, embedding_model="all-MiniLM-L6-v2", dimension=384)
    )
    results, _ = await rag.retriever.search("tenant-two", name, "launch code", RetrievalOptions())
    assert results == []


async def test_ingestion_steps_retried_store_every_chunk_once(rag: RagSystem) -> None:
    """A worker that dies after any step and has the step re-run still ends with each chunk
    stored exactly once (the steps are idempotent)."""
    tenant = "store-t"
    name = await make_index(rag, tenant)
    ingestion_id = unique("ing")
    text = "\n\n".join(f"Paragraph {i} is about subject {i}." for i in range(60))
    record = IngestionRecord(
        id=ingestion_id,
        tenant=tenant,
        index_name=name,
        documents=[IngestionDocumentState(document_id="doc")],
        sources=[SourceDocument(document_id="doc", format=DocumentFormat.PLAIN_TEXT)],
    )
    record.chunking.chunk_size = 60
    await rag.ingestion.create(record, [text.encode()])
    request = IngestionRequest(
        tenant=tenant, ingestion_id=ingestion_id, index_name=name, document_count=1, batch_size=16
    )
    await rag.ingestion.start(request)
    prepared = await rag.ingestion.prepare(request, 0)
    prepared_again = await rag.ingestion.prepare(request, 0)  # re-run after a crash
    assert prepared.chunk_count == prepared_again.chunk_count == 60
    for start in range(0, 60, 16):
        await rag.ingestion.embed_batch(request, 0, start, min(start + 16, 60))
        await rag.ingestion.embed_batch(request, 0, start, min(start + 16, 60))  # retried
    mid = await rag.ingestion.get(tenant, ingestion_id)
    assert mid.progress.chunks_done == 60  # counted once despite the retries
    # The worker dies after the chunks are in the index, before the document is marked
    # done: the retried commit still finds what it needs and finishes the document.
    set_doc = rag.ingestion._set_doc

    async def dies(*args: object, **changes: object) -> None:
        raise ConnectionError("worker gone")

    rag.ingestion._set_doc = dies  # type: ignore[method-assign]
    with pytest.raises(ConnectionError):
        await rag.ingestion.commit(request, 0)
    rag.ingestion._set_doc = set_doc  # type: ignore[method-assign]
    await rag.ingestion.commit(request, 0)
    await rag.ingestion.commit(request, 0)  # re-run after the commit: a no-op
    final = await rag.ingestion.finish(request)
    assert final.status == "succeeded"
    index = await rag.store.get_index(tenant, name)
    assert index.chunk_count == 60


def scored(doc: str, position: int, text: str, score: float) -> ScoredChunk:
    chunk = Chunk(id=f"{doc}:{position}", document_id=doc, position=position, text=text)
    return ScoredChunk(chunk=chunk, score=score, title=doc)


def test_context_dedupes_trims_and_orders() -> None:
    shared = "the shared overlapping sentence of both chunks."
    retrieved = [
        scored("b", 0, "B zero text.", 0.9),
        scored("a", 1, shared + " And the second chunk goes on.", 0.8),
        scored("a", 0, "First chunk starts here and then " + shared, 0.7),
        scored("b", 0, "B zero text.", 0.9),  # the same chunk twice
        scored("c", 0, "word " * 400, 0.1),  # too long for the budget
    ]
    by_score = assemble_rag_context(retrieved, max_tokens=200)
    assert [c.chunk.id for c in by_score.chunks] == ["b:0", "a:1", "a:0"]
    assert by_score.retrieved_count == 5 and 0 < by_score.context_tokens <= 200
    merged = by_score.chunks[1].chunk.text
    assert merged == "And the second chunk goes on."
    by_position = assemble_rag_context(retrieved, max_tokens=200, order=ContextOrder.POSITION)
    assert [c.chunk.id for c in by_position.chunks] == ["b:0", "a:0", "a:1"]


def test_signal_rerank_weights_matter() -> None:
    first = scored("a", 0, "nothing relevant", 0.9)
    first.details.vector_score = 0.9
    second = scored("b", 0, "the zx-4471 error code explained", 0.5)
    second.details.vector_score = 0.5
    semantic = signal_rerank(
        "zx-4471 error",
        [first, second],
        RerankOptions(method=RerankMethod.SIGNALS, semantic_weight=1),
    )
    assert semantic[0].chunk.document_id == "a"
    lexical = signal_rerank(
        "zx-4471 error",
        [first, second],
        RerankOptions(method=RerankMethod.SIGNALS, lexical_weight=1),
    )
    assert lexical[0].chunk.document_id == "b" and lexical[0].score == pytest.approx(1.0)
    assert ChatUsage().total_tokens == 0


async def test_agent_tool_queries_the_tenants_index(rag: RagSystem, runtime: Runtime) -> None:
    name = await make_index(rag, "alpha")
    await put(rag, "alpha", name, "faq", ["Refunds are possible within 30 days of purchase."])
    context = ToolContext(tenant="alpha", run_id="r1", tool_call_id="c1")
    call = ToolCallPart(
        tool_call_id="c1",
        tool_name=RAG_QUERY_TOOL,
        arguments={"index_name": name, "query": "how long can I get a refund?"},
    )
    result = await runtime.tools.call(call, context, allowed=[RAG_QUERY_TOOL])
    assert not result.is_error
    assert result.result["results"][0]["document_id"] == "faq"
    other = await runtime.tools.call(
        call, dataclasses.replace(context, tenant="beta"), allowed=[RAG_QUERY_TOOL]
    )
    assert other.is_error and "not found" in str(other.result)
