"""Publishing streamed text without holding up the model stream."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable


class DeltaBatcher:
    """Publishes text deltas in order, one append at a time: the first delta goes out at
    once, and deltas that arrive while an append is in flight go out together as the next
    one. The model's stream never waits on Redis, and a fast model makes fewer, larger
    events instead of a queue of one-character appends."""

    def __init__(self, publish: Callable[[str], Awaitable[None]]) -> None:
        self._publish = publish
        self._buffer: list[str] = []
        self._task: asyncio.Task[None] | None = None

    async def add(self, text: str) -> None:
        self._buffer.append(text)
        if self._task is not None and self._task.done():
            task, self._task = self._task, None
            task.result()  # a failed append fails the step
        if self._task is None:
            self._task = asyncio.ensure_future(self._drain())
            # Let the append go out now: a model whose chunks are already buffered would
            # otherwise be read to the end before the first delta is sent.
            await asyncio.sleep(0)

    async def _drain(self) -> None:
        while self._buffer:
            text = "".join(self._buffer)
            self._buffer.clear()
            await self._publish(text)

    async def flush(self) -> None:
        """Wait until every delta added so far is published."""
        if self._task is not None:
            task, self._task = self._task, None
            await task
        if self._buffer:
            await self._drain()

    async def cancel(self) -> None:
        if self._task is not None and not self._task.done():
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        self._task = None
