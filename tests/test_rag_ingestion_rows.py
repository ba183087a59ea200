"""An ingestion's documents in rows of their own: exact counters when many documents'
batches run at once (each also run twice), and records stored before migration 0014
(documents inside the record's JSON) read and carried on after it. Real Postgres, Redis and
the local embedding model; no gRPC, no Temporal."""

from __future__ import annotations

import asyncio
import hashlib
import json

import psycopg
import pytest
from psycopg import sql

from loomwork.rag.chunking import chunk_document
from loomwork.rag.extract import extract
from loomwork.rag.ingestion import IngestionSteps
from loomwork.rag.ingestion_models import IngestionRequest, SourceDocument, new_ingestion
from loomwork.rag.models import ChunkingOptions, DocumentFormat, IndexSpec
from loomwork.rag.store import RagStore
from loomwork.storage.database import Database
from loomwork.storage.migrations import apply_migrations, load_migrations
from server.runtime import Runtime
from tests.store_support import database_beside
from tests.support import unique

TENANT = "rows-t"


def _texts(count: int) -> list[str]:
    """Documents of 1 to 4 short paragraphs: many small documents, not all the same size."""
    return [
        "\n\n".join(
            f"Note {d}.{p}: the ferry to island {d} leaves from pier {p} at dawn."
            for p in range(1 + d % 4)
        )
        for d in range(count)
    ]


def _chunk_counts(texts: list[str], options: ChunkingOptions) -> list[int]:
    """Each document's chunks as the chunker makes them, outside any ingestion."""
    return [
        len(
            chunk_document(
                extract(t.encode(), DocumentFormat.PLAIN_TEXT),
                options,
                document_id=f"n{i}",
                content_hash=hashlib.sha256(t.encode()).hexdigest(),
            )
        )
        for i, t in enumerate(texts)
    ]


async def test_many_documents_batches_at_once_keep_exact_progress(runtime: Runtime) -> None:
    """150 documents (more than one IngestDocuments call takes), every batch of every
    document running at once and each batch run twice (a retry racing its first attempt):
    every counter ends exact, per document and for the ingestion."""
    assert runtime.rag is not None
    steps = runtime.rag.ingestion
    index = unique("rows").replace("-", "_")
    await runtime.rag.store.create_index(
        TENANT, IndexSpec(name=index, embedding_model="all-MiniLM-L6-v2", dimension=384)
    )
    texts = _texts(150)
    options = ChunkingOptions(chunk_size=60)
    expected = _chunk_counts(texts, options)
    assert sum(expected) > len(texts)  # documents of several chunks, batches of 2
    sources = [
        SourceDocument(document_id=f"n{i}", format=DocumentFormat.PLAIN_TEXT)
        for i in range(len(texts))
    ]
    record = new_ingestion(TENANT, index, unique("ing"), sources, options)
    await steps.create(record, [t.encode() for t in texts])
    request = IngestionRequest(
        tenant=TENANT,
        ingestion_id=record.id,
        index_name=index,
        document_count=len(texts),
        batch_size=2,
    )
    await steps.start(request)
    prepared = await asyncio.gather(*(steps.prepare(request, i) for i in range(len(texts))))
    assert [p.chunk_count for p in prepared] == expected

    batches = [
        (i, start, min(start + 2, count))
        for i, count in enumerate(expected)
        for start in range(0, count, 2)
    ]
    await asyncio.gather(*(steps.embed_batch(request, *b) for b in batches + batches))
    mid = await steps.get(TENANT, record.id)
    assert mid.progress.documents_total == len(texts)
    assert mid.progress.chunks_total == mid.progress.chunks_done == sum(expected)
    assert [(d.chunks_total, d.chunks_done) for d in mid.documents] == [(n, n) for n in expected]
    assert mid.progress.documents_done == 0

    await asyncio.gather(*(steps.commit(request, i) for i in range(len(texts))))
    final = await steps.finish(request)
    assert final.status == "succeeded"
    assert final.progress.documents_done == len(texts)
    assert final.progress.chunks_done == final.progress.chunks_total == sum(expected)
    assert {d.status for d in final.documents} == {"succeeded"}
    index_now = await runtime.rag.store.get_index(TENANT, index)
    assert index_now.document_count == len(texts)
    assert index_now.chunk_count == sum(expected)
    # The listing says the same, without reading the documents.
    [listed] = await steps.list(TENANT, index_name=index)
    assert listed.progress == final.progress and listed.documents == []


# As IngestionRecord.model_dump_json() stored them before migration 0014: a running
# ingestion of three documents (one stored, one failed, one half embedded) and an ended one.
_RUNNING = {
    "id": "ing_before",
    "tenant": TENANT,
    "index_name": "idx",
    "status": "running",
    "progress": {
        "documents_total": 3,
        "documents_done": 1,
        "documents_failed": 1,
        "chunks_total": 8,
        "chunks_done": 5,
    },
    "documents": [
        {
            "document_id": "a",
            "file_name": "a.md",
            "status": "succeeded",
            "chunks_total": 3,
            "chunks_done": 3,
            "page_count": 0,
            "error": None,
        },
        {
            "document_id": "b",
            "file_name": "b.pdf",
            "status": "failed",
            "chunks_total": 0,
            "chunks_done": 0,
            "page_count": 0,
            "error": {"code": 3, "reason": "DOCUMENT_CORRUPT", "message": "bad xref"},
        },
        {
            "document_id": "c",
            "file_name": "",
            "status": "embedding",
            "chunks_total": 5,
            "chunks_done": 2,
            "page_count": 2,
            "error": None,
        },
    ],
    "sources": [
        {
            "document_id": "a",
            "file_name": "a.md",
            "title": "A",
            "source_uri": "https://example.org/a",
            "format": "markdown",
            "metadata": {"team": "docs"},
            "size_bytes": 10,
            "content_hash": "",
        },
        {
            "document_id": "b",
            "file_name": "b.pdf",
            "title": "",
            "source_uri": "",
            "format": "pdf",
            "metadata": {},
            "size_bytes": 0,
            "content_hash": "",
        },
        {
            "document_id": "c",
            "file_name": "",
            "title": "",
            "source_uri": "",
            "format": "unspecified",
            "metadata": {"n": 3},
            "size_bytes": 0,
            "content_hash": "",
        },
    ],
    "chunking": {
        "strategy": "recursive",
        "chunk_size": 0,
        "chunk_overlap": None,
        "separators": [],
        "token_encoding": "o200k_base",
    },
    "error": None,
    "create_time": "2026-12-01T10:00:00Z",
    "start_time": "2026-12-01T10:00:01Z",
    "end_time": None,
    "workflow_id": "rag/idx/rows-t/ing_before",
    "terminal_event_id": 0,
}
_ENDED = {
    **_RUNNING,
    "id": "ing_ended",
    "status": "succeeded",
    "progress": {
        "documents_total": 1,
        "documents_done": 1,
        "documents_failed": 0,
        "chunks_total": 3,
        "chunks_done": 3,
    },
    "documents": _RUNNING["documents"][:1],  # type: ignore[index]
    "sources": _RUNNING["sources"][:1],  # type: ignore[index]
    "end_time": "2026-12-01T10:00:09Z",
    "workflow_id": "rag/idx/rows-t/ing_ended",
    "terminal_event_id": 7,
}


@pytest.fixture
async def premigration_db(runtime: Runtime) -> str:
    """A database of its own, migrated up to 0013 only."""
    assert runtime.settings.database_url
    name = unique("loomwork_premigration").replace("-", "_")
    url = await database_beside(runtime.settings.database_url, name)
    db = Database(url)
    await db.open()
    try:
        await apply_migrations(db, [m for m in load_migrations() if m.version <= 13])
    finally:
        await db.close()
    yield url
    async with await psycopg.AsyncConnection.connect(
        runtime.settings.database_url, autocommit=True
    ) as conn:
        await conn.execute(sql.SQL("drop database {} with (force)").format(sql.Identifier(name)))


async def test_records_stored_before_the_migration_read_and_carry_on(
    runtime: Runtime, premigration_db: str
) -> None:
    # A tenant of its own: the events go to logs no earlier run of this test ended.
    tenant = unique("rows-old")
    db = Database(premigration_db)
    await db.open()
    try:
        async with db.connection() as conn:
            for record in (_RUNNING, _ENDED):
                await conn.execute(
                    "insert into rag_ingestions (tenant_id, id, index_name, status, record)"
                    " values (%s, %s, %s, %s, %s)",
                    (
                        tenant,
                        record["id"],
                        "idx",
                        record["status"],
                        json.dumps({**record, "tenant": tenant}),
                    ),
                )
        assert await apply_migrations(db) == [m.version for m in load_migrations()][13:]
        assert runtime.rag is not None
        steps = IngestionSteps(db, RagStore(db), runtime.rag.embedders, runtime.events)

        running = await steps.get(tenant, "ing_before")
        assert running.status == "running"
        assert running.model_dump(mode="json", include={"progress", "documents"}) == {
            "progress": _RUNNING["progress"],
            "documents": _RUNNING["documents"],
        }
        assert running.workflow_id == _RUNNING["workflow_id"]
        assert running.start_time is not None and running.start_time.second == 1
        ended = await steps.get(tenant, "ing_ended")
        assert ended.status == "succeeded" and ended.terminal_event_id == 7
        assert ended.model_dump(mode="json")["progress"] == _ENDED["progress"]
        listed = await steps.list(tenant)
        assert [(r.id, r.progress.chunks_done) for r in listed] == [
            ("ing_ended", 3),
            ("ing_before", 5),
        ]
        request = IngestionRequest(
            tenant=tenant, ingestion_id="ing_before", index_name="idx", document_count=3
        )
        state, source = await steps.document(request, 0)
        assert source.model_dump(mode="json") == _RUNNING["sources"][0]  # type: ignore[index]
        assert state.status == "succeeded"

        # The running one carries on: its third document finishes, then the ingestion.
        await steps._set_doc(request, 2, status="succeeded", chunks_done=5)
        final = await steps.finish(request)
        assert final.status == "partially_succeeded"
        assert final.progress.model_dump() == {
            "documents_total": 3,
            "documents_done": 2,
            "documents_failed": 1,
            "chunks_total": 8,
            "chunks_done": 8,
        }
        assert [d.status for d in final.documents] == ["succeeded", "failed", "succeeded"]
        assert final.documents[1].error is not None
        assert final.documents[1].error.reason == "DOCUMENT_CORRUPT"
        async with db.connection() as conn:
            cur = await conn.execute(
                "select record from rag_ingestions where tenant_id = %s", (tenant,)
            )
            kept = [set(r["record"]) for r in await cur.fetchall()]
        assert all(not keys & {"documents", "sources", "progress"} for keys in kept)
    finally:
        await db.close()
