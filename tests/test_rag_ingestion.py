"""RagService ingestion end to end: duplicates and replacements, bad documents, uploads,
watching and canceling an ingestion, and a worker killed mid-ingestion."""

from __future__ import annotations

import asyncio
import hashlib

import grpc
import pytest

from loomwork.rag.ingestion_models import derived_document_id
from protos.loomwork.v1 import rag_pb2
from tests.rag_support import ANIMALS, GUIDE, create_index, ingest, wait_ingestion
from tests.support import auth, field_violations, unique, worker_process
from tests.test_rag_extract import minimal_pdf


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


async def test_watch_after_events_expired_sends_the_finished_event(rag, token, runtime) -> None:
    from loomwork.rag.ingestion_models import ingestion_log_key

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


async def test_worker_killed_mid_ingestion_finishes_with_every_chunk_once(
    rag, token, runtime, embedded, tmp_path
) -> None:
    """A worker process SIGKILLed in the middle of an ingestion is replaced by another; the run
    resumes at its batch and ends with each chunk stored exactly once."""
    import signal
    from datetime import timedelta

    from temporalio.worker import Worker

    from activities.rag import RagActivities
    from loomwork.rag.ingestion_models import (
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

    doomed = worker_process(embedded, queue, tmp_path / "doomed-worker.log")
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
