"""RagAnswer: retrieve + assemble the context, stream the model's answer, finish.

Events (started, retrieval, text deltas, citations, usage, finished/failed) go to the
answer's Redis stream from the activities, exactly like an agent run's.
"""

from __future__ import annotations

import asyncio
from datetime import timedelta

from temporalio import workflow
from temporalio.common import RetryPolicy
from temporalio.exceptions import ActivityError, ApplicationError, CancelledError

from workflows.retries import (
    MODEL_CALL,
    MODEL_HEARTBEAT_TIMEOUT,
    OUTAGE_PATIENCE,
    bookkeeping_retries,
)

with workflow.unsafe.imports_passed_through():
    from loomwork.rag.answer import (
        AnswerError,
        AnswerRecord,
        AnswerRequest,
        GeneratedAnswer,
        RetrievedContext,
    )

RETRIEVE = "rag_answer_retrieve"
GENERATE = "rag_answer_generate"
FINISH = "rag_answer_finish"

_NEVER_RETRIED = ["NotFound", "InvalidArgument", "FailedPrecondition"]
# Twelve attempts: ~1 min of backoff, ~5 min with attempts that wait out Redis (20 s each).
_RETRIEVAL = RetryPolicy(
    initial_interval=timedelta(milliseconds=300),
    maximum_interval=timedelta(seconds=10),
    maximum_attempts=12,
    non_retryable_error_types=_NEVER_RETRIED,
)
# Finishing (save and publish the end): retried while Redis or Postgres is out.
_BOOKKEEPING = bookkeeping_retries(_NEVER_RETRIED)
_CODES = {
    "NotFound": (5, "NOT_FOUND"),
    "InvalidArgument": (3, "INVALID_ARGUMENT"),
    "ModelRequestRejected": (9, "MODEL_REQUEST_REJECTED"),
    "ModelRateLimited": (8, "MODEL_RATE_LIMITED"),
    "ModelUnavailable": (14, "RETRIES_EXHAUSTED"),
}


def _error(error: BaseException) -> AnswerError:
    while isinstance(error, ActivityError) and error.cause is not None:
        error = error.cause
    kind = error.type if isinstance(error, ApplicationError) else type(error).__name__
    message = error.message if isinstance(error, ApplicationError) else str(error)
    code, reason = _CODES.get(kind or "", (13, "ANSWER_FAILED"))
    return AnswerError(code=code, reason=reason, message=message)


@workflow.defn(name="RagAnswer")
class RagAnswerWorkflow:
    @workflow.run
    async def run(self, request: AnswerRequest) -> AnswerRecord:
        answer: GeneratedAnswer | None = None
        status, error = "succeeded", None
        try:
            context = await workflow.execute_activity(
                RETRIEVE,
                request,
                result_type=RetrievedContext,
                start_to_close_timeout=timedelta(minutes=2),
                retry_policy=_RETRIEVAL,
                summary="retrieve and assemble context",
            )
            answer = await workflow.execute_activity(
                GENERATE,
                args=[request, context],
                result_type=GeneratedAnswer,
                start_to_close_timeout=timedelta(minutes=5),
                heartbeat_timeout=MODEL_HEARTBEAT_TIMEOUT,
                retry_policy=MODEL_CALL,
                summary="stream the answer",
            )
        except (ActivityError, asyncio.CancelledError, CancelledError) as exc:
            canceled = isinstance(exc, asyncio.CancelledError | CancelledError) or (
                isinstance(exc, ActivityError) and isinstance(exc.cause, CancelledError)
            )
            if canceled:
                status = "canceled"
            else:
                status, error = "failed", _error(exc)
        return await workflow.execute_activity(
            FINISH,
            args=[request, answer, status, error],
            result_type=AnswerRecord,
            start_to_close_timeout=timedelta(seconds=30),
            schedule_to_close_timeout=OUTAGE_PATIENCE,
            retry_policy=_BOOKKEEPING,
            summary=f"finish ({status})",
        )
