"""Parallel, continued-as-new ingestion on real servers: two worker processes sharing the
work while one is SIGKILLed, a small continue-as-new threshold, and a cancel that reaches a
continued run."""

from __future__ import annotations

import asyncio
import hashlib
import signal
from typing import Any

from temporalio.api.enums.v1 import EventType
from temporalio.client import Client

from loomwork.rag.chunking import chunk_document
from loomwork.rag.extract import extract
from loomwork.rag.ingestion_models import (
    IngestionDocumentState,
    IngestionRecord,
    IngestionRequest,
    SourceDocument,
)
from loomwork.rag.models import ChunkingOptions, DocumentFormat
from protos.loomwork.v1 import rag_pb2
from tests.rag_support import create_index, wait_ingestion
from tests.support import auth, unique, worker_process
from workflows.ingestion import IngestionWorkflow


def _texts(count: int, paragraphs: int, topic: str) -> list[str]:
    return [
        "\n\n".join(
            f"Document {d} paragraph {p} on {topic} and their keepers." for p in range(paragraphs)
        )
        for d in range(count)
    ]


def _expected_chunks(texts: list[str], chunk_size: int) -> int:
    """The chunks the chunker makes of `texts`, counted outside any ingestion."""
    options = ChunkingOptions(chunk_size=chunk_size)
    return sum(
        len(
            chunk_document(
                extract(t.encode(), DocumentFormat.UNSPECIFIED),
                options,
                document_id=f"d{i}",
                content_hash=hashlib.sha256(t.encode()).hexdigest(),
            )
        )
        for i, t in enumerate(texts)
    )


async def _runs(client: Client, workflow_id: str, first_run_id: str) -> list[Any]:
    """The histories of every run of the workflow, from the first one along its
    continue-as-new chain."""
    histories, run_id = [], first_run_id
    while run_id:
        history = await client.get_workflow_handle(workflow_id, run_id=run_id).fetch_history()
        histories.append(history)
        last = history.events[-1]
        run_id = ""
        if last.event_type == EventType.EVENT_TYPE_WORKFLOW_EXECUTION_CONTINUED_AS_NEW:
            run_id = last.workflow_execution_continued_as_new_event_attributes.new_execution_run_id
    return histories


def _activity_workers(histories: list[Any]) -> set[str]:
    return {
        e.activity_task_started_event_attributes.identity
        for h in histories
        for e in h.events
        if e.event_type == EventType.EVENT_TYPE_ACTIVITY_TASK_STARTED
    }


async def _stored_chunks(runtime: Any, index: str) -> tuple[int, int, int]:
    """(rows, distinct (document, position) pairs, documents) of the index's stored chunks."""
    async with runtime.rag.store.db.connection() as conn:
        cur = await conn.execute(
            "select count(*) as n, count(distinct (c.document_id, c.position)) as d,"
            " count(distinct c.document_id) as docs from rag_chunks c"
            " join rag_indexes i on i.id = c.index_id where i.name = %s",
            (index,),
        )
        row = await cur.fetchone()
    assert row is not None
    return int(row["n"]), int(row["d"]), int(row["docs"])


async def test_two_workers_one_killed_store_every_chunk_once(
    rag, token, runtime, embedded, tmp_path
) -> None:
    system = runtime.rag
    index = await create_index(rag, token)
    queue = unique("rag-pair")
    ingestion_id = unique("ing")
    texts = _texts(12, 150, "lighthouses")
    expected = _expected_chunks(texts, 60)
    record = IngestionRecord(
        id=ingestion_id,
        tenant="alpha",
        index_name=index,
        documents=[IngestionDocumentState(document_id=f"d{i}") for i in range(len(texts))],
        sources=[SourceDocument(document_id=f"d{i}") for i in range(len(texts))],
        workflow_id=f"rag/{index}/alpha/{ingestion_id}",
    )
    record.chunking.chunk_size = 60
    await system.ingestion.create(record, [t.encode() for t in texts])

    doomed = worker_process(embedded, queue, tmp_path / "doomed.log")
    survivor = worker_process(embedded, queue, tmp_path / "survivor.log")
    doomed_identity = f"{doomed.pid}@"
    try:
        handle = await runtime.temporal.start_workflow(
            IngestionWorkflow.run,
            IngestionRequest(
                tenant="alpha",
                ingestion_id=ingestion_id,
                index_name=index,
                document_count=len(texts),
                batch_size=16,
                parallelism=4,
            ),
            id=record.workflow_id,
            task_queue=queue,
        )
        first_run = handle.result_run_id or ""
        # Until both processes have completed activities, and chunks remain to embed.
        for _ in range(2400):
            assert doomed.poll() is None, (tmp_path / "doomed.log").read_text()
            workers = _activity_workers(
                await _runs(runtime.temporal, record.workflow_id, first_run)
            )
            busy = {w.split("@")[0] for w in workers}
            if {str(doomed.pid), str(survivor.pid)} <= busy:
                break
            current = await system.ingestion.get("alpha", ingestion_id)
            assert current.status in ("pending", "running"), "ended before both workers took part"
            await asyncio.sleep(0.05)
        else:
            raise AssertionError("the two workers never both ran activities")
        doomed.send_signal(signal.SIGKILL)  # activities in flight, no chance to clean up
        doomed.wait(10)
        stopped = await system.ingestion.get("alpha", ingestion_id)
        assert stopped.status == "running"
        assert stopped.progress.chunks_done < expected

        final = await asyncio.wait_for(handle.result(), timeout=240)
    finally:
        for process in (doomed, survivor):
            if process.poll() is None:
                process.send_signal(signal.SIGTERM)
                process.wait(30)
    assert final.status == "succeeded"
    assert final.progress.documents_done == len(texts)
    assert final.progress.chunks_done == final.progress.chunks_total == expected
    assert await _stored_chunks(runtime, index) == (expected, expected, len(texts))
    workers = _activity_workers(await _runs(runtime.temporal, record.workflow_id, first_run))
    assert any(w.startswith(doomed_identity) for w in workers)
    assert any(w.startswith(f"{survivor.pid}@") for w in workers)


async def test_small_threshold_continues_as_new_with_exact_counts(
    rag, token, runtime, monkeypatch
) -> None:
    monkeypatch.setattr(runtime.settings, "ingest_continue_after", 4)
    monkeypatch.setattr(runtime.settings, "ingest_parallelism", 3)
    index = await create_index(rag, token)
    texts = _texts(6, 50, "windmills")
    expected = _expected_chunks(texts, 200)
    documents = [rag_pb2.DocumentInput(document_id=f"d{i}", text=t) for i, t in enumerate(texts)]
    documents.append(rag_pb2.DocumentInput(document_id="binary", data=bytes(range(256)) * 4))
    started = await rag.IngestDocuments(
        rag_pb2.IngestDocumentsRequest(
            index_name=index, documents=documents, chunking=rag_pb2.ChunkingOptions(chunk_size=200)
        ),
        metadata=auth(token),
    )
    final = await wait_ingestion(rag, token, started.ingestion.id)

    assert final.status == rag_pb2.INGESTION_STATUS_PARTIALLY_SUCCEEDED
    assert final.progress.documents_total == 7
    assert final.progress.documents_done == 6 and final.progress.documents_failed == 1
    assert final.progress.chunks_done == final.progress.chunks_total == expected
    assert await _stored_chunks(runtime, index) == (expected, expected, 6)
    got = await rag.GetIngestion(
        rag_pb2.GetIngestionRequest(ingestion_id=started.ingestion.id), metadata=auth(token)
    )
    assert got.ingestion.status == rag_pb2.INGESTION_STATUS_PARTIALLY_SUCCEEDED

    workflow_id = got.ingestion.temporal_workflow_id
    histories = await _runs(
        runtime.temporal, workflow_id, await _first_run_id(runtime, workflow_id)
    )
    # 7 preparations, 6 commits and 6 batches or more, 4 at most per run: 5 runs or more.
    assert len(histories) >= 5
    for history in histories:
        scheduled = sum(
            e.event_type == EventType.EVENT_TYPE_ACTIVITY_TASK_SCHEDULED for e in history.events
        )
        assert scheduled <= 4 + 2  # + start, finish
    progress = await runtime.temporal.get_workflow_handle(workflow_id).query("progress")
    assert progress == {"documents_done": 7, "chunks_done": expected}


async def _first_run_id(runtime: Any, workflow_id: str) -> str:
    """The first run of `workflow_id`, as its latest run's start event names it."""
    latest = await runtime.temporal.get_workflow_handle(workflow_id).fetch_history()
    started = latest.events[0].workflow_execution_started_event_attributes
    return str(started.first_execution_run_id)


async def test_cancel_reaches_a_continued_run_and_stops_it(
    rag, token, runtime, monkeypatch
) -> None:
    monkeypatch.setattr(runtime.settings, "ingest_continue_after", 3)
    monkeypatch.setattr(runtime.settings, "ingest_parallelism", 2)
    index = await create_index(rag, token)
    texts = _texts(30, 40, "tides")
    started = await rag.IngestDocuments(
        rag_pb2.IngestDocumentsRequest(
            index_name=index,
            documents=[
                rag_pb2.DocumentInput(document_id=f"d{i}", text=t) for i, t in enumerate(texts)
            ],
            chunking=rag_pb2.ChunkingOptions(chunk_size=60),
        ),
        metadata=auth(token),
    )
    ingestion_id = started.ingestion.id
    for _ in range(2400):  # until two documents are stored (a run has continued by then)
        got = await rag.GetIngestion(
            rag_pb2.GetIngestionRequest(ingestion_id=ingestion_id), metadata=auth(token)
        )
        if got.ingestion.progress.documents_done >= 2:
            break
        await asyncio.sleep(0.05)
    await rag.CancelIngestion(
        rag_pb2.CancelIngestionRequest(ingestion_id=ingestion_id), metadata=auth(token)
    )
    final = await wait_ingestion(rag, token, ingestion_id)

    assert final.status == rag_pb2.INGESTION_STATUS_CANCELED
    by_status: dict[int, int] = {}
    for document in final.documents:
        by_status[document.status] = by_status.get(document.status, 0) + 1
    assert by_status.get(rag_pb2.INGESTION_DOCUMENT_STATUS_SUCCEEDED, 0) >= 2
    assert by_status.get(rag_pb2.INGESTION_DOCUMENT_STATUS_CANCELED, 0) >= 1
    # Only the documents it finished are in the index, each whole, nothing after the cancel.
    succeeded = [
        d for d in final.documents if d.status == rag_pb2.INGESTION_DOCUMENT_STATUS_SUCCEEDED
    ]
    stored = sum(d.chunks_total for d in succeeded)
    assert await _stored_chunks(runtime, index) == (stored, stored, len(succeeded))
    workflow_id = final.temporal_workflow_id
    result = await runtime.temporal.get_workflow_handle_for(
        IngestionWorkflow.run, workflow_id
    ).result()
    assert result.status == "canceled"  # the run returned its record, canceled
    histories = await _runs(
        runtime.temporal, workflow_id, await _first_run_id(runtime, workflow_id)
    )
    assert len(histories) >= 2  # the cancel reached a run that had continued as new
    async with runtime.rag.store.db.connection() as conn:
        cur = await conn.execute(
            "select count(*) as n from rag_staged_chunks where ingestion_id = %s", (ingestion_id,)
        )
        row = await cur.fetchone()
    assert row is not None and row["n"] == 0
