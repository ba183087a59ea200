"""The Temporal worker: every workflow and activity, on task queue `loomwork`."""

from __future__ import annotations

from datetime import timedelta

from temporalio.worker import Worker

from activities.diagnostics import DiagnosticsActivities
from activities.memory import MemoryActivities
from server.runtime import Runtime
from workflows.index_messages import IndexMessagesWorkflow
from workflows.stack_check import StackCheckWorkflow

WORKFLOWS = [StackCheckWorkflow, IndexMessagesWorkflow]


def build_worker(runtime: Runtime, *, identity: str | None = None) -> Worker:
    diagnostics = DiagnosticsActivities(runtime.db, runtime.redis)
    memory = MemoryActivities(runtime.recall)
    return Worker(
        runtime.temporal,
        task_queue=runtime.settings.task_queue,
        workflows=WORKFLOWS,
        activities=[diagnostics.check_dependencies, memory.embed_messages],
        # A killed worker's sticky tasks move to another worker quickly.
        sticky_queue_schedule_to_start_timeout=timedelta(seconds=2),
        graceful_shutdown_timeout=timedelta(seconds=10),
        identity=identity,
    )
