"""Ingestion: extract -> chunk -> embed in batches -> upsert.

Each step is its own activity with retries (a batch of embeddings is one activity), up to
`parallelism` of them at once (documents and batches alike), so the work spreads over every
worker polling the queue. A run continues as new after `continue_after` activities (or when
Temporal suggests it), carrying the work left and the counters, so its history stays small
whatever the size of the ingestion; the workflow id (what Get/Watch/Cancel use) stays.
A worker killed mid-ingestion costs the step it was in; the steps are idempotent (staged
chunks keyed by document and position, a document committed in one replacing transaction),
so the run ends with every chunk stored once. Progress is in Postgres and on the
ingestion's event stream; the `progress` query reads the workflow's view.

Runs started before parallel ingestion replay on the sequential path they began on.
"""

from __future__ import annotations

import asyncio
from datetime import timedelta

from temporalio import workflow
from temporalio.common import RetryPolicy
from temporalio.exceptions import ActivityError, ApplicationError, CancelledError
from temporalio.workflow import ActivityCancellationType

from workflows.ingestion_work import Job, WorkPlan
from workflows.retries import OUTAGE_PATIENCE, bookkeeping_retries
from workflows.search_attributes import STATUS

with workflow.unsafe.imports_passed_through():
    from loomwork.rag.ingestion_models import (
        IngestionCursor,
        IngestionRecord,
        IngestionRequest,
        PreparedDocument,
    )

START = "rag_ingest_start"
PREPARE = "rag_ingest_prepare"
EMBED = "rag_ingest_embed"
COMMIT = "rag_ingest_commit"
FINISH = "rag_ingest_finish"
# Runs that began before it stay sequential (their histories say so).
PARALLEL_PATCH = "ingestion-parallel-continue-as-new"

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
# The parallel path's steps: a canceled step is waited for (nothing writes after `finish`).
# They are never run eagerly by the worker running the workflow, which would take them all
# (workflows/spread.py): every worker polling the queue gets its share.
_WAIT = ActivityCancellationType.WAIT_CANCELLATION_COMPLETED


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
        if not workflow.patched(PARALLEL_PATCH):
            return await self._run_sequential(request)
        cursor = request.cursor or IngestionCursor()
        self._documents_done, self._chunks_done = cursor.documents_done, cursor.chunks_done
        canceled, error = False, ""
        try:
            if request.cursor is None:
                workflow.upsert_search_attributes([STATUS.value_set("RUNNING")])
                await self._start(request)
            left = await self._work(request, WorkPlan(request, cursor), cursor.continued)
            if left is not None:
                workflow.continue_as_new(request.model_copy(update={"cursor": left}))
        except (ActivityError, asyncio.CancelledError, CancelledError) as exc:
            if _is_cancellation(exc):
                canceled = True
            else:
                error = _cause(exc)
        return await self._finish(request, canceled, error)

    async def _work(
        self, request: IngestionRequest, plan: WorkPlan, continued: int
    ) -> IngestionCursor | None:
        """Run the plan's jobs, `parallelism` at a time, until none is left (None) or this
        run has started enough of them: then, with nothing in flight, the work left."""
        running: list[asyncio.Task[None]] = []
        started = 0
        try:
            while True:
                enough = started >= request.continue_after or (
                    started > 0 and workflow.info().is_continue_as_new_suggested()
                )
                while not enough and len(running) < request.parallelism:
                    job = plan.next_job()
                    if job is None:
                        break
                    running.append(asyncio.create_task(self._job(request, plan, job)))
                    started += 1
                    enough = started >= request.continue_after
                if not running:
                    break
                await workflow.wait_condition(lambda: any(t.done() for t in running))
                for task in [t for t in running if t.done()]:
                    running.remove(task)
                    task.result()  # the first failure ends the ingestion
        except BaseException:
            # Canceled, or a step failed for good: stop the rest, and wait until they have
            # (nothing may write after `finish`).
            for task in running:
                task.cancel()
            await asyncio.gather(*running, return_exceptions=True)
            raise
        if not plan.left():
            return None
        return plan.cursor(self._documents_done, self._chunks_done, continued + 1)

    async def _job(self, request: IngestionRequest, plan: WorkPlan, job: Job) -> None:
        if job.kind == "prepare":
            prepared = await workflow.execute_activity(
                PREPARE,
                args=[request, job.ordinal],
                result_type=PreparedDocument,
                start_to_close_timeout=timedelta(minutes=10),
                heartbeat_timeout=_HEARTBEAT,
                retry_policy=_RETRY,
                cancellation_type=_WAIT,
                summary=f"extract and chunk document {job.ordinal + 1}",
            )
            embedding = prepared.status == "embedding"
            plan.prepared(job.ordinal, prepared.chunk_count if embedding else None)
            if not embedding:
                self._documents_done += 1
        elif job.kind == "embed":
            await workflow.execute_activity(
                EMBED,
                args=[request, job.ordinal, job.start, job.end],
                result_type=int,
                start_to_close_timeout=timedelta(minutes=5),
                heartbeat_timeout=_HEARTBEAT,
                retry_policy=_RETRY,
                cancellation_type=_WAIT,
                summary=f"embed chunks {job.start}..{job.end - 1} of document {job.ordinal + 1}",
            )
            plan.embedded(job.ordinal)
            self._chunks_done += job.end - job.start
        else:
            await workflow.execute_activity(
                COMMIT,
                args=[request, job.ordinal],
                start_to_close_timeout=timedelta(minutes=2),
                retry_policy=_RETRY,
                cancellation_type=_WAIT,
                summary=f"store document {job.ordinal + 1}",
            )
            plan.committed(job.ordinal)
            self._documents_done += 1

    async def _start(self, request: IngestionRequest) -> None:
        await workflow.execute_activity(
            START,
            request,
            start_to_close_timeout=timedelta(seconds=30),
            schedule_to_close_timeout=OUTAGE_PATIENCE,
            retry_policy=_BOOKKEEPING,
        )

    async def _finish(
        self, request: IngestionRequest, canceled: bool, error: str
    ) -> IngestionRecord:
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

    # -- the sequential path of runs that began before parallel ingestion

    async def _run_sequential(self, request: IngestionRequest) -> IngestionRecord:
        canceled, error = False, ""
        workflow.upsert_search_attributes([STATUS.value_set("RUNNING")])
        try:
            await self._start(request)
            for ordinal in range(request.document_count):
                await self._document(request, ordinal)
                self._documents_done += 1
        except (ActivityError, asyncio.CancelledError, CancelledError) as exc:
            if _is_cancellation(exc):
                canceled = True
            else:
                error = _cause(exc)
        return await self._finish(request, canceled, error)

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
