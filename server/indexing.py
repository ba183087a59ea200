"""Starting the IndexMessages workflow for messages just stored, and the sweep that starts
it later for those whose start failed (kept in the backlog meanwhile)."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import uuid
from datetime import timedelta

from temporalio.client import Client
from temporalio.common import SearchAttributePair, TypedSearchAttributes

from loomwork.memory.index_backlog import IndexBacklog
from loomwork.memory.models import MessagesToIndex
from loomwork.messages import Message
from workflows.index_messages import IndexMessagesWorkflow
from workflows.search_attributes import TENANT, THREAD

log = logging.getLogger(__name__)

# A start that takes longer is left to the sweep: the messages are stored already, and the
# call that stored them should not wait out a Temporal that does not answer.
START_TIMEOUT = timedelta(seconds=5)


async def start_indexing(temporal: Client, task_queue: str, batch: MessagesToIndex) -> str:
    """Start embedding the batch's messages in the background; the workflow id."""
    workflow_id = f"memory-index/{batch.thread_id}/{uuid.uuid4().hex[:12]}"
    await temporal.start_workflow(
        IndexMessagesWorkflow.run,
        batch,
        id=workflow_id,
        task_queue=task_queue,
        search_attributes=TypedSearchAttributes(
            [
                SearchAttributePair(TENANT, batch.tenant),
                SearchAttributePair(THREAD, batch.thread_id),
            ]
        ),
        static_summary=f"embed {len(batch.message_ids)} message(s) of thread {batch.thread_id}",
        rpc_timeout=START_TIMEOUT,
    )
    return workflow_id


class MessageIndexing:
    """Indexing of stored messages for semantic recall: started at once, or, when Temporal
    cannot start it, kept in the backlog and started by the sweep (`sweep_forever`)."""

    def __init__(self, temporal: Client, task_queue: str, backlog: IndexBacklog) -> None:
        self.temporal = temporal
        self.task_queue = task_queue
        self.backlog = backlog

    async def index(self, tenant: str, thread_id: str, messages: list[Message]) -> None:
        """Start indexing `messages` (stored already); if that fails, keep them for the sweep.
        Never raises: the messages are stored, and the call that stored them succeeded (if
        they can be neither started nor kept, that is logged)."""
        if not messages:
            return
        batch = MessagesToIndex(
            tenant=tenant, thread_id=thread_id, message_ids=[m.id for m in messages]
        )
        try:
            await start_indexing(self.temporal, self.task_queue, batch)
        except Exception as error:
            log.warning(
                "could not start indexing of %d message(s) in %s (%s): kept for the sweep",
                len(messages),
                thread_id,
                error,
            )
            try:
                await self.backlog.add(batch)
            except Exception:
                log.exception(
                    "could not keep %d message(s) of %s for the sweep", len(messages), thread_id
                )

    async def sweep(self) -> int:
        """Start the indexing of what the backlog keeps; how many messages were started."""

        async def start(batch: MessagesToIndex) -> None:
            await start_indexing(self.temporal, self.task_queue, batch)

        return await self.backlog.sweep(start)

    async def sweep_forever(self, interval: float) -> None:
        """`sweep` every `interval` seconds until cancelled; a failed sweep is logged and
        tried again at the next one."""
        while True:
            await asyncio.sleep(interval)
            try:
                started = await self.sweep()
            except Exception as error:
                log.warning("indexing sweep failed (%s): trying again in %gs", error, interval)
                continue
            if started:
                log.info("indexing sweep: started indexing of %d kept message(s)", started)


class IndexingSweep:
    """The sweep as a background task of a server process, started and stopped with it."""

    def __init__(self, indexing: MessageIndexing, interval: float) -> None:
        self.indexing = indexing
        self.interval = interval
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        if self._task is None:
            self._task = asyncio.create_task(
                self.indexing.sweep_forever(self.interval), name="indexing-sweep"
            )

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
