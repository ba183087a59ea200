"""An ingestion or answer whose workflow an operator terminated (here: before any worker
took it) ends for its watchers: the stream ends with the terminal event saying why, and the
record says the same to GetIngestion / GetAnswer, instead of RUNNING forever."""

from __future__ import annotations

import asyncio
import hashlib

from loomwork.rag.answer import AnswerRecord, AnswerRequest
from loomwork.rag.ingestion_models import (
    IngestionRequest,
    SourceDocument,
    new_ingestion,
)
from loomwork.rag.models import ChunkingOptions, DocumentFormat
from protos.loomwork.v1 import rag_pb2, run_pb2
from server.runtime import Runtime
from tests.rag_support import create_index
from tests.support import auth, unique

TENANT = "alpha"  # the tenant of the `token` fixture
# No worker polls it: the workflow waits there until the operator terminates it.
NOBODY_POLLS = "nobody-polls-this-queue"


async def _collect(stream: object) -> list[object]:
    return [response.event async for response in stream]  # type: ignore[attr-defined]


async def _stuck_ingestion(runtime: Runtime, index: str) -> str:
    """An ingestion whose workflow no worker will take."""
    assert runtime.rag is not None
    data = b"Tides rise and fall twice a day."
    source = SourceDocument(
        document_id="tides",
        format=DocumentFormat.PLAIN_TEXT,
        size_bytes=len(data),
        content_hash=hashlib.sha256(data).hexdigest(),
    )
    record = new_ingestion(TENANT, index, unique("ing"), [source], ChunkingOptions())
    stored = await runtime.rag.ingestion.create(record, [data])
    await runtime.temporal.start_workflow(
        "RagIngestion",
        IngestionRequest(tenant=TENANT, ingestion_id=stored.id, index_name=index, document_count=1),
        id=stored.workflow_id,
        task_queue=NOBODY_POLLS,
    )
    return stored.id


async def test_watchers_of_a_terminated_ingestion_get_its_end(rag, token, runtime) -> None:
    index = await create_index(rag, token)
    ingestion_id = await _stuck_ingestion(runtime, index)
    request = rag_pb2.WatchIngestionRequest(ingestion_id=ingestion_id)
    watching = asyncio.ensure_future(
        _collect(rag.WatchIngestion(request, metadata=auth(token), timeout=60))
    )
    await asyncio.sleep(0.5)  # the watcher has read what there is and waits
    got = await rag.GetIngestion(
        rag_pb2.GetIngestionRequest(ingestion_id=ingestion_id), metadata=auth(token)
    )
    assert got.ingestion.status == rag_pb2.INGESTION_STATUS_PENDING
    handle = runtime.temporal.get_workflow_handle(got.ingestion.temporal_workflow_id)
    await handle.terminate(reason="stopped by the operator")

    events = await watching
    last = events[-1]
    assert last.HasField("finished"), events
    assert last.finished.status == rag_pb2.INGESTION_STATUS_FAILED
    assert "terminated: stopped by the operator" in last.finished.error.message
    got = await rag.GetIngestion(
        rag_pb2.GetIngestionRequest(ingestion_id=ingestion_id), metadata=auth(token)
    )
    assert got.ingestion.status == rag_pb2.INGESTION_STATUS_FAILED
    assert got.ingestion.last_event_id == last.event_id
    # A watcher coming later gets the same end at once.
    again = await _collect(rag.WatchIngestion(request, metadata=auth(token), timeout=10))
    assert [e.event_id for e in again][-1] == last.event_id


async def test_watchers_of_a_terminated_answer_get_its_end(rag, token, runtime) -> None:
    assert runtime.rag is not None
    index = await create_index(rag, token)
    answer_id = unique("ans")
    workflow_id = f"rag-answer/{index}/{TENANT}/{answer_id}"
    await runtime.rag.answers.create(
        TENANT,
        AnswerRecord(
            id=answer_id, index_name=index, query="When do tides rise?", workflow_id=workflow_id
        ),
    )
    await runtime.temporal.start_workflow(
        "RagAnswer",
        AnswerRequest(
            tenant=TENANT, answer_id=answer_id, index_name=index, query="When do tides rise?"
        ),
        id=workflow_id,
        task_queue=NOBODY_POLLS,
    )
    request = rag_pb2.WatchAnswerRequest(answer_id=answer_id)
    watching = asyncio.ensure_future(
        _collect(rag.WatchAnswer(request, metadata=auth(token), timeout=60))
    )
    await asyncio.sleep(0.5)
    await runtime.temporal.get_workflow_handle(workflow_id).terminate(reason="out of budget")

    events = await watching
    last = events[-1]
    assert last.HasField("failed"), events
    assert "terminated: out of budget" in last.failed.message
    got = await rag.GetAnswer(rag_pb2.GetAnswerRequest(answer_id=answer_id), metadata=auth(token))
    assert got.answer.status == run_pb2.RUN_STATUS_FAILED
    assert "terminated: out of budget" in got.answer.error.message
