"""Activities that heartbeat while they work, and hand their work back when the worker stops."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Coroutine
from datetime import timedelta
from typing import Any, TypeVar

from temporalio import activity
from temporalio.api.common.v1 import WorkflowExecution
from temporalio.api.workflowservice.v1 import ResetStickyTaskQueueRequest
from temporalio.exceptions import ApplicationError
from temporalio.service import RPCError

from loomwork.retries import WORKER_SHUTDOWN

log = logging.getLogger(__name__)

T = TypeVar("T")

HAND_BACK_RETRY = timedelta(seconds=1.5)


async def heartbeating(
    work: Coroutine[Any, Any, T],
    every: float = 1.0,
    *,
    hand_back: bool = False,
    after_loss: bool = False,
) -> T:
    """Run `work`, heartbeating meanwhile: Temporal delivers a cancel (CancelRun) through
    heartbeats, and cancelling `work` aborts the in-flight model HTTP call; a worker that dies
    stops heartbeating, so its activity is retried elsewhere once its heartbeat timeout passes.

    `hand_back`: work that can be done again from the start (a model step) stops as soon as
    its worker begins to shut down and fails retryably, so another worker takes it within
    HAND_BACK_RETRY instead of after the worker's grace period.

    The first heartbeat goes out shortly after the start (not before: the first model
    tokens should not wait on it), then one per `every` (the worker sends at most one a
    second to the server either way). A retried attempt (or one `after_loss` of a worker
    otherwise) first unsticks its workflow from the worker that ran it so far
    (`forget_sticky_worker`)."""
    task = asyncio.ensure_future(work)
    waits: set[asyncio.Future[Any]] = {task}
    lost = after_loss or activity.info().attempt > 1
    unstick = asyncio.ensure_future(forget_sticky_worker()) if lost else None
    shutdown: asyncio.Future[None] | None = None
    if hand_back:
        shutdown = asyncio.ensure_future(activity.wait_for_worker_shutdown())
        waits.add(shutdown)
    wait = min(every, 0.1)
    try:
        while True:
            done, _ = await asyncio.wait(waits, timeout=wait, return_when=asyncio.FIRST_COMPLETED)
            if task in done:
                return task.result()
            if shutdown is not None and shutdown in done:
                await _stop(task)
                raise ApplicationError(
                    "the worker shut down: the step is handed to another worker",
                    type=WORKER_SHUTDOWN,
                    # Not at once: a poll this worker still has open would take it again.
                    next_retry_delay=HAND_BACK_RETRY,
                )
            activity.heartbeat()
            wait = every
    except asyncio.CancelledError:
        await _stop(task)
        raise
    finally:
        if shutdown is not None:
            shutdown.cancel()
        if unstick is not None:
            await unstick  # before the attempt completes (and its workflow task is scheduled)


async def forget_sticky_worker() -> None:
    """Send the workflow's next task to its task queue, not to the worker that ran its last.

    A workflow's tasks go to the worker that ran its last one (its sticky queue); were that
    worker killed, the next task would wait out the sticky schedule-to-start timeout before
    any other worker got it. A heartbeating activity's retried attempt most often follows
    such a loss (its attempt's heartbeat timed out), so it resets the stickiness as it
    starts: the task its completion schedules goes to the task queue at once, where a live
    worker replays the run's history. Nothing else changes (Temporal's
    ResetStickyTaskQueue); best effort."""
    info = activity.info()
    if not (info.workflow_id and info.workflow_namespace):
        return
    execution = WorkflowExecution(workflow_id=info.workflow_id, run_id=info.workflow_run_id or "")
    request = ResetStickyTaskQueueRequest(namespace=info.workflow_namespace, execution=execution)
    try:
        await activity.client().workflow_service.reset_sticky_task_queue(
            request, timeout=timedelta(seconds=5)
        )
    except (RPCError, RuntimeError) as error:  # RuntimeError: no client (a test's activity)
        log.warning("could not unstick %s from its last worker: %s", info.workflow_id, error)


async def _stop(task: asyncio.Future[Any]) -> None:
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError, Exception):
        await task
