"""Ingestion: extract -> chunk -> embed in batches -> upsert, one document at a time.

Each step is its own activity with retries (a batch of embeddings is one activity),
so a worker killed mid-ingestion resumes at the step it was in; the steps are
idempotent, so the run ends with every chunk stored once. Progress is in Postgres
and on the ingestion's event stream; the `progress` query reads the workflow's view.
"""

from __future__ import annotations

import asyncio
from datetime import timedelta

from temporalio import workflow
from temporalio.common import RetryPolicy
from temporalio.exceptions import ActivityError, ApplicationError, CancelledError

from workflows.retries import OUTAGE_PATIENCE, bookkeeping_retries
from workflows.search_attributes import STATUS

with workflow.unsafe.imports_passed_through():
    from loomwork.rag.ingestion import IngestionRecord, IngestionRequest, PreparedDocument

START = "rag_ingest_start"
PREPARE = "rag_ingest_prepare"
EMBED = "rag_ingest_embed"
COMMIT = "rag_ingest_commit"
FINISH = "rag_ingest_finish"

_NEVER_RETRIED = ["NotFound", "InvalidArgument", "FailedPrecondition"]
# Twelve attempts: ~2 min of backoff, ~6 min with attempts that wait out Redis (20 s each).
_RETRY = RetryPolicy(
    initial_interval=timedelta(milliseconds=300),
    backoff_coefficient=2.0,
    maximum_interval=timedelta(seconds=20),
    maximum_attempts=12,
    non_retryable_error_types=_NEVER_RETRIED,
)
# Starting and finishing (save and publish): retried while Redis or Postgres is out.
_BOOKKEEPING = bookkeeping_retries(_NEVER_RETRIED)


def _is_cancellation(error: BaseException) -> bool:
    return isinstance(error, asyncio.CancelledError | CancelledError) or (
        isinstance(error, ActivityError) and isinstance(error.cause, CancelledError)
    )


def _cause(error: BaseException) -> str:
    while isinstance(error, ActivityError) and error.cause is not None:
        error = error.cause
    if isinstance(error, ApplicationError):
        return error.message
    return str(error)


# The activities heartbeat every second: a worker that dies mid-batch is noticed within this.
_HEARTBEAT = timedelta(seconds=10)


@workflow.defn(name="RagIngestion")
class IngestionWorkflow:
    def __init__(self) -> None:
        self._documents_done = 0
        self._chunks_done = 0

    @workflow.query(name="progress")
    def progress(self) -> dict[str, int]:
        return {"documents_done": self._documents_done, "chunks_done": self._chunks_done}

    @workflow.run
    async def run(self, request: IngestionRequest) -> IngestionRecord:
        canceled, error = False, ""
        workflow.upsert_search_attributes([STATUS.value_set("RUNNING")])
        try:
            await workflow.execute_activity(
                START,
                request,
                start_to_close_timeout=timedelta(seconds=30),
                schedule_to_close_timeout=OUTAGE_PATIENCE,
                retry_policy=_BOOKKEEPING,
            )
            for ordinal in range(request.document_count):
                await self._document(request, ordinal)
                self._documents_done += 1
        except (ActivityError, asyncio.CancelledError, CancelledError) as exc:
            if _is_cancellation(exc):
                canceled = True
            else:
                error = _cause(exc)
        record = await workflow.execute_activity(
            FINISH,
            args=[request, canceled, error],
            result_type=IngestionRecord,
            start_to_close_timeout=timedelta(seconds=30),
            schedule_to_close_timeout=OUTAGE_PATIENCE,
            retry_policy=_BOOKKEEPING,
            summary="finish",
        )
        workflow.upsert_search_attributes([STATUS.value_set(record.status.upper())])
        return record

    async def _document(self, request: IngestionRequest, ordinal: int) -> None:
        prepared = await workflow.execute_activity(
            PREPARE,
            args=[request, ordinal],
            result_type=PreparedDocument,
            start_to_close_timeout=timedelta(minutes=10),
            heartbeat_timeout=_HEARTBEAT,
            retry_policy=_RETRY,
            summary=f"extract and chunk document {ordinal + 1}",
        )
        if prepared.status != "embedding":
            return
        size = request.batch_size
        for start in range(0, prepared.chunk_count, size):
            end = min(start + size, prepared.chunk_count)
            await workflow.execute_activity(
                EMBED,
                args=[request, ordinal, start, end],
                result_type=int,
                start_to_close_timeout=timedelta(minutes=5),
                heartbeat_timeout=_HEARTBEAT,
                retry_policy=_RETRY,
                summary=f"embed chunks {start}..{end - 1} of document {ordinal + 1}",
            )
            self._chunks_done += end - start
        await workflow.execute_activity(
            COMMIT,
            args=[request, ordinal],
            start_to_close_timeout=timedelta(minutes=2),
            retry_policy=_RETRY,
            summary=f"store document {ordinal + 1}",
        )
