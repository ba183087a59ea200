"""Activities over conversation memory."""

from __future__ import annotations

from temporalio import activity
from temporalio.exceptions import ApplicationError

from activities.heartbeats import heartbeating
from loomwork.errors import FailedPrecondition, InvalidArgument
from loomwork.memory.models import MessagesToIndex
from loomwork.memory.recall import MessageRecall


class MemoryActivities:
    def __init__(self, recall: MessageRecall) -> None:
        self.recall = recall

    @activity.defn(name="embed_messages")
    async def embed_messages(self, params: MessagesToIndex) -> int:
        try:
            return await heartbeating(
                self.recall.index_messages(params.tenant, params.thread_id, params.message_ids)
            )
        except (FailedPrecondition, InvalidArgument) as exc:
            raise ApplicationError(
                exc.message, type=type(exc).__name__, non_retryable=True
            ) from exc
