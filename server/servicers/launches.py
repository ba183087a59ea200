"""Runs started in the background while their callers already stream them: a Stream call
answers with run_started as the run is accepted, and Temporal starts it meanwhile."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Coroutine
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
