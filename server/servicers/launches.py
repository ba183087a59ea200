"""Runs started in the background while their callers already stream them: a Stream call
answers with run_started as the run is accepted, and Temporal starts it meanwhile.

A start waits while other calls are being accepted (up to `DEFER_UP_TO` seconds): in a
burst of calls, starting the first runs (Temporal's start, the first step begun on a worker)
would take the CPU the other calls' run_started waits for, on the server and on the machine
(session 12: Temporal alone took about half a core while 200 calls were accepted). With no
accept in flight a start goes at once."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Coroutine, Iterator
from contextlib import contextmanager
from typing import Any, TypeVar

log = logging.getLogger(__name__)

T = TypeVar("T")

#: The longest a start waits for the accepts in flight to end (seconds).
DEFER_UP_TO = 0.5


class Launches:
    """Starts going on in the background, each kept until done: a caller that hangs up
    does not cancel the start of a run it was told about (its log is open, with no TTL,
    until the run ends)."""

    def __init__(self, *, defer_up_to: float = DEFER_UP_TO) -> None:
        self._tasks: set[asyncio.Task[Any]] = set()
        self.defer_up_to = defer_up_to
        self._accepting = 0
        self._deferred: list[asyncio.Future[None]] = []

    @contextmanager
    def accepting(self) -> Iterator[None]:
        """Around the accept of a call: starts wait until no accept is in flight."""
        self._accepting += 1
        try:
            yield
        finally:
            self._accepting -= 1
            if not self._accepting:
                deferred, self._deferred = self._deferred, []
                for waiter in deferred:
                    _settle(waiter)

    def start(
        self, start: Coroutine[Any, Any, T], name: str, *, defer: bool = True
    ) -> asyncio.Task[T]:
        """Run `start` in the background; `defer`: after the accepts in flight (a start
        another call may be waiting on, as a repeat of a client run id is, goes at once)."""
        task = asyncio.create_task(self._after_accepts(start, defer), name=name)
        self._tasks.add(task)
        task.add_done_callback(self._done)
        return task

    async def _after_accepts(self, start: Coroutine[Any, Any, T], defer: bool) -> T:
        if defer and self._accepting and self.defer_up_to > 0:
            loop = asyncio.get_running_loop()
            waiter = loop.create_future()
            self._deferred.append(waiter)
            timer = loop.call_later(self.defer_up_to, _settle, waiter)
            try:
                await waiter
            except asyncio.CancelledError:
                start.close()  # never begun
                raise
            finally:
                timer.cancel()
        return await start

    def _done(self, task: asyncio.Task[Any]) -> None:
        self._tasks.discard(task)
        if not task.cancelled() and (error := task.exception()) is not None:
            log.info("%s failed: %s", task.get_name(), error)

    def __len__(self) -> int:
        return len(self._tasks)


def _settle(waiter: asyncio.Future[None]) -> None:
    if not waiter.done():
        waiter.set_result(None)
