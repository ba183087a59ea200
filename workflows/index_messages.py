"""IndexMessages: embed freshly stored messages for semantic recall, as its own durable run."""

from __future__ import annotations

from datetime import timedelta

from pydantic import BaseModel
from temporalio import workflow
from temporalio.common import RetryPolicy

from workflows.retries import BACKGROUND_HEARTBEAT_TIMEOUT

with workflow.unsafe.imports_passed_through():
    from loomwork.memory.models import MessagesToIndex

EMBED_MESSAGES = "embed_messages"


class IndexMessagesResult(BaseModel):
    indexed: int


@workflow.defn(name="IndexMessages")
class IndexMessagesWorkflow:
    @workflow.run
    async def run(self, params: MessagesToIndex) -> IndexMessagesResult:
        indexed = await workflow.execute_activity(
            EMBED_MESSAGES,
            params,
            heartbeat_timeout=BACKGROUND_HEARTBEAT_TIMEOUT,
            start_to_close_timeout=timedelta(minutes=2),
            retry_policy=RetryPolicy(
                initial_interval=timedelta(seconds=1),
                backoff_coefficient=2.0,
                maximum_interval=timedelta(minutes=1),
                maximum_attempts=10,
                non_retryable_error_types=["FailedPrecondition", "InvalidArgument"],
            ),
            result_type=int,
            summary=f"embed {len(params.message_ids)} message(s)",
        )
        return IndexMessagesResult(indexed=indexed)
