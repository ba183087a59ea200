"""Starting the IndexMessages workflow for messages just stored."""

from __future__ import annotations

import logging
import uuid

from temporalio.client import Client
from temporalio.common import SearchAttributePair, TypedSearchAttributes

from loomwork.memory.models import MessagesToIndex
from loomwork.messages import Message
from workflows.index_messages import IndexMessagesWorkflow
from workflows.search_attributes import TENANT, THREAD

log = logging.getLogger(__name__)


async def start_indexing(
    temporal: Client, task_queue: str, tenant: str, thread_id: str, messages: list[Message]
) -> str | None:
    """Start embedding `messages` in the background; the workflow id, or None if it failed.

    The messages are already committed, so a failure here is logged, not raised: recall
    misses them until they are re-indexed, but the append itself succeeded.
    """
    if not messages:
        return None
    workflow_id = f"memory-index/{thread_id}/{uuid.uuid4().hex[:12]}"
    try:
        await temporal.start_workflow(
            IndexMessagesWorkflow.run,
            MessagesToIndex(
                tenant=tenant, thread_id=thread_id, message_ids=[m.id for m in messages]
            ),
            id=workflow_id,
            task_queue=task_queue,
            search_attributes=TypedSearchAttributes(
                [SearchAttributePair(TENANT, tenant), SearchAttributePair(THREAD, thread_id)]
            ),
            static_summary=f"embed {len(messages)} message(s) of thread {thread_id}",
        )
    except Exception:
        log.exception("could not start indexing of %d message(s) in %s", len(messages), thread_id)
        return None
    return workflow_id
