"""RagService indexes and queries end to end: index lifecycle, metadata filters and
citations, hybrid search and reranking, and tenant isolation, on Postgres + pgvector with
the local embedding model."""

from __future__ import annotations

import hashlib

import grpc
import pytest
from google.protobuf import struct_pb2

from loomwork.testing import ScriptedModelServer, Turn
from protos.loomwork.v1 import rag_pb2
from tests.rag_support import ANIMALS, GUIDE, create_index, ingest, meta, wait_ingestion
from tests.support import auth, field_violations, unique


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


# Real text: option descriptions from the PostgreSQL 15 documentation (pg_dump and
# pg_restore reference pages; PostgreSQL Licence, see bench/data/postgres-docs/LICENSE).
PG_OPTIONS = {
    "pg_dump-clean": "# pg_dump\n\n## Options\n\n`-c`\n`--clean`\n\nOutput commands to DROP all"
    " the dumped database objects prior to outputting the commands for creating them. This"
    " option is useful when the restore is to overwrite an existing database. If any of the"
    " objects do not exist in the destination database, ignorable error messages will be"
    " reported during restore, unless `--if-exists` is also specified.",
    "pg_dump-create": "# pg_dump\n\n## Options\n\n`-C`\n`--create`\n\nBegin the output with a"
    " command to create the database itself and reconnect to the created database. (With a"
    " script of this form, it doesn't matter which database in the destination installation"
    " you connect to before running the script.)",
    "pg_dump-data-only": "# pg_dump\n\n## Options\n\n`-a`\n`--data-only`\n\nDump only the"
    " data, not the schema (data definitions). Table data, large objects, and sequence values"
    " are dumped.",
    "pg_restore-clean": "# pg_restore\n\n## Options\n\n`-c`\n`--clean`\n\nBefore restoring"
    " database objects, issue commands to DROP all the objects that will be restored. This"
    " option is useful for overwriting an existing database.",
    "pg_restore-create": "# pg_restore\n\n## Options\n\n`-C`\n`--create`\n\nCreate the"
    " database before restoring into it. If `--clean` is also specified, drop and recreate"
    " the target database before connecting to it.",
    "pg_restore-data-only": "# pg_restore\n\n## Options\n\n`-a`\n`--data-only`\n\nRestore"
    " only the data, not the schema (data definitions). Table data, large objects, and"
    " sequence values are restored, if present in the archive.",
    "pg_restore-jobs": "# pg_restore\n\n## Options\n\n`-j number-of-jobs`\n"
    "`--jobs=number-of-jobs`\n\nRun the most time-consuming steps of pg_restore — those that"
    " load data, create indexes, or create constraints — concurrently, using up to"
    " number-of-jobs concurrent sessions.",
    "vacuumdb-stages": "# vacuumdb\n\n## Options\n\n`--analyze-in-stages`\n\nOnly calculate"
    " statistics for use by the optimizer (no vacuum), like `--analyze-only`. Run three"
    " stages of analyze; the first stage uses the lowest possible statistics target to"
    " produce usable statistics faster.",
}


async def test_hybrid_keeps_the_exact_command_full_text_finds(rag, token) -> None:
    index = await create_index(rag, token)
    await ingest(
        rag,
        token,
        index,
        [
            rag_pb2.DocumentInput(
                document_id=key, text=text, format=rag_pb2.DOCUMENT_FORMAT_MARKDOWN
            )
            for key, text in PG_OPTIONS.items()
        ],
    )
    question = "What does pg_restore -C do?"

    async def ranking(**retrieval: object) -> list[str]:
        response = await rag.Query(
            rag_pb2.QueryRequest(
                index_name=index,
                query=question,
                retrieval=rag_pb2.RetrievalOptions(top_k=8, **retrieval),  # type: ignore[arg-type]
            ),
            metadata=auth(token),
        )
        return [r.chunk.document_id for r in response.results]

    hybrid = rag_pb2.SEARCH_MODE_HYBRID
    full_text = await ranking(
        mode=hybrid, hybrid=rag_pb2.HybridOptions(vector_weight=0, lexical_weight=1)
    )
    vector = await ranking()
    fused = await ranking(mode=hybrid)
    print(f"full text {full_text}\nvector {vector}\nhybrid {fused}")
    # Full text alone finds the passage holding the command and its option; meaning alone
    # does not (the embedding model lowercases: -C and -c look the same to it).
    assert full_text[0] == "pg_restore-create"
    assert vector[0] != "pg_restore-create"
    # Hybrid keeps it in the top 3 however meaning ranks the look-alike passages.
    assert "pg_restore-create" in fused[:3]
    # A reranker judging meaning does not push it out of the top 3 either.
    reranked = await ranking(
        mode=hybrid, rerank=rag_pb2.RerankOptions(method=rag_pb2.RERANK_METHOD_SIGNALS)
    )
    assert "pg_restore-create" in reranked[:3]
