"""Runs started in the background while their callers already stream them: a Stream call
answers with run_started as the run is accepted, and Temporal starts it meanwhile."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Coroutine
from typing import Any, TypeVar

log = logging.getLogger(__name__)

T = TypeVar("T")


class Launches:
    """Starts going on in the background, each kept until done: a caller that hangs up
    does not cancel the start of a run it was told about (its log is open, with no TTL,
    until the run ends)."""

    def __init__(self) -> None:
        self._tasks: set[asyncio.Task[Any]] = set()

    def start(self, start: Coroutine[Any, Any, T], name: str) -> asyncio.Task[T]:
        task = asyncio.create_task(start, name=name)
        self._tasks.add(task)
        task.add_done_callback(self._done)
        return task

    def _done(self, task: asyncio.Task[Any]) -> None:
        self._tasks.discard(task)
        if not task.cancelled() and (error := task.exception()) is not None:
            log.info("%s failed: %s", task.get_name(), error)

    def __len__(self) -> int:
        return len(self._tasks)


async def until_failed(events: AsyncIterator[T], launch: asyncio.Task[Any]) -> AsyncIterator[T]:
    """`events`, cut short by the error of `launch` if it fails (a run Temporal refused
    publishes nothing after run_started: its caller hears why instead of waiting)."""
    try:
        while not launch.done():
            following = asyncio.ensure_future(anext(events))
            await asyncio.wait({following, launch}, return_when=asyncio.FIRST_COMPLETED)
            if not following.done() and (launch.cancelled() or launch.exception() is not None):
                following.cancel()
                with contextlib.suppress(asyncio.CancelledError, StopAsyncIteration):
                    await following
                launch.result()  # raises why the start failed
            try:
                item = await following
            except StopAsyncIteration:
                return
            yield item
        launch.result()
        async for item in events:
            yield item
    finally:
        aclose = getattr(events, "aclose", None)
        if aclose is not None:
            await aclose()
