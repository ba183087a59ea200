"""Activities that heartbeat while they work, and hand their work back when the worker stops."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Coroutine
from datetime import timedelta
from typing import Any, TypeVar

from temporalio import activity
from temporalio.exceptions import ApplicationError

T = TypeVar("T")

#: The error type of work handed back by a worker that shuts down (retried elsewhere).
WORKER_SHUTDOWN = "WorkerShutdown"
HAND_BACK_RETRY = timedelta(seconds=1.5)


async def heartbeating(
    work: Coroutine[Any, Any, T], every: float = 1.0, *, hand_back: bool = False
) -> T:
    """Run `work`, heartbeating meanwhile: Temporal delivers a cancel (CancelRun) through
    heartbeats, and cancelling `work` aborts the in-flight model HTTP call; a worker that dies
    stops heartbeating, so its activity is retried elsewhere once its heartbeat timeout passes.

    `hand_back`: work that can be done again from the start (a model step) stops as soon as
    its worker begins to shut down and fails retryably, so another worker takes it within
    HAND_BACK_RETRY instead of after the worker's grace period.

    The first heartbeat goes out shortly after the start (not before: the first model
    tokens should not wait on it), then one per `every` (the worker sends at most one a
    second to the server either way)."""
    task = asyncio.ensure_future(work)
    waits: set[asyncio.Future[Any]] = {task}
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


async def _stop(task: asyncio.Future[Any]) -> None:
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError, Exception):
        await task
