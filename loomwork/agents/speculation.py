"""A run's first step begun while its start is still on the way to Temporal.

The service starts an agent run eagerly: its first workflow task, and then its first
activity (context + first model call), come to the worker of the same process. Between the
call and that activity lie two round trips to Temporal, ~10–25 ms in which the model could
already be answering. `SpeculativeSteps` begins the step in that gap; the run's first
activity, when it starts in this process, adopts the step in flight instead of beginning
its own, so the model's first tokens are under way before the run's activity even starts.

What leaves a step before it is owned is fenced:

- it writes to memory (the run's input messages) only once the run is confirmed to exist
  and to have come to this process (`confirm`);
- from then on it streams its text (or partial objects) as a *draft* (`drafting`): events
  the run's event log takes only until an activity that did not adopt the step takes the
  draft over (`RunEventLog.take_draft`); that activity then publishes `step_retrying` for
  attempt 1, so readers discard the draft's text, and streams its own;
- every other event (tool calls, usage, the step's end) waits until the activity adopted
  the step (`adopt`);
- a step that is not adopted within `ttl` seconds, or whose start did not come to this
  process (`abandon`), is cancelled with its model call.

So a step that is never adopted costs one aborted model call, and at most a draft readers
are told to discard. After `refusals` starts in a row that did not come to this process
(`abandon(refused=True)`), speculation pauses for `pause` seconds: on a Temporal without
eager start, or a worker with no free slot, it would only ever cost calls. (One such start
alone is no sign: a repeated call racing its first joins a run that is already under way.)
"""

from __future__ import annotations

import asyncio
import contextvars
import logging
from collections.abc import Callable, Coroutine
from dataclasses import dataclass, field
from typing import Any, Generic, TypeVar

log = logging.getLogger(__name__)

T = TypeVar("T")


@dataclass(eq=False)
class _Step(Generic[T]):
    confirmed: asyncio.Event = field(default_factory=asyncio.Event)
    adopted: asyncio.Event = field(default_factory=asyncio.Event)
    ttl: float = 0.0
    task: asyncio.Task[T] | None = None
    expiry: asyncio.TimerHandle | None = None


_current: contextvars.ContextVar[_Step[Any] | None] = contextvars.ContextVar(
    "loomwork_speculative_step", default=None
)


async def until_confirmed() -> None:
    """Wait, in a speculative step, until its run exists here (before writing anything)."""
    step = _current.get()
    if step is not None:
        await step.confirmed.wait()


def drafting() -> bool:
    """Whether this is a speculative step no activity has adopted yet: what it streams goes
    out as a draft (after `until_confirmed`)."""
    step = _current.get()
    return step is not None and not step.adopted.is_set()


async def until_adopted() -> None:
    """Wait, in a speculative step, until an activity owns it (before publishing)."""
    step = _current.get()
    if step is not None:
        await step.adopted.wait()


class SpeculativeSteps(Generic[T]):
    """Steps begun ahead of the activity that will own them, by key (tenant and run)."""

    def __init__(self, *, ttl: float = 10.0, pause: float = 60.0, refusals: int = 3) -> None:
        self.ttl = ttl
        self.pause = pause
        self.refusals = refusals
        self._steps: dict[str, _Step[T]] = {}
        # When each key's step was begun, kept `ttl` beyond that: a run's first step is
        # begun once. (Two calls naming one client run id at once both start the run; the
        # later one, once the first step was adopted and gone, would begin it again.)
        self._begun: dict[str, float] = {}
        self._paused_until = 0.0
        self._refused = 0  # starts in a row that did not come to this process
        self.adopted = 0  # how many steps an activity took over (for tests and benchmarks)

    def begin(self, key: str, work: Callable[[], Coroutine[Any, Any, T]]) -> bool:
        """Begin `work` as the step of `key`; False (nothing begun) while paused or when the
        key has (or had, within `ttl`) a step already."""
        loop = asyncio.get_running_loop()
        now = loop.time()
        if key in self._steps or now < self._paused_until:
            return False
        for old in [k for k, at in self._begun.items() if at < now - self.ttl]:
            del self._begun[old]
        if key in self._begun:
            return False
        self._begun[key] = now
        step: _Step[T] = _Step(ttl=self.ttl)
        context = contextvars.copy_context()
        context.run(_current.set, step)
        step.task = loop.create_task(work(), context=context)
        step.task.add_done_callback(_quiet)
        step.expiry = loop.call_later(self.ttl, self._expire, key, step)
        self._steps[key] = step
        return True

    def confirm(self, key: str) -> None:
        """The run exists and its first task came to this process: the step may write."""
        step = self._steps.get(key)
        if step is not None:
            self._refused = 0
            step.confirmed.set()

    def abandon(self, key: str, *, refused: bool = False) -> None:
        """Cancel the step of `key` (its run did not start, or not here). `refused`: the
        start went elsewhere; after `refusals` in a row, speculation pauses."""
        step = self._steps.pop(key, None)
        if step is not None:
            self._cancel(step)
        if refused:
            self._refused += 1
            if self._refused >= self.refusals:
                self._refused = 0
                self._paused_until = asyncio.get_running_loop().time() + self.pause
                log.info("first steps paused for %.0f s: runs start elsewhere", self.pause)

    def adopt(self, key: str) -> asyncio.Task[T] | None:
        """The step of `key`, now owned by the caller (it may write and publish), or None."""
        step = self._steps.pop(key, None)
        if step is None:
            return None
        assert step.task is not None and step.expiry is not None
        step.expiry.cancel()
        step.confirmed.set()
        step.adopted.set()
        self.adopted += 1
        return step.task

    async def close(self) -> None:
        """Cancel every step not adopted yet."""
        steps = list(self._steps.values())
        self._steps.clear()
        for step in steps:
            self._cancel(step)
        await asyncio.gather(*(s.task for s in steps if s.task is not None), return_exceptions=True)

    def _expire(self, key: str, step: _Step[T]) -> None:
        if self._steps.get(key) is step:
            del self._steps[key]
            log.warning("first step of %s not adopted within %.1f s: cancelled", key, step.ttl)
            self._cancel(step)

    @staticmethod
    def _cancel(step: _Step[T]) -> None:
        if step.expiry is not None:
            step.expiry.cancel()
        if step.task is not None:
            step.task.cancel()


def _quiet(task: asyncio.Task[Any]) -> None:
    """Retrieve a step's outcome so an unadopted failure is not logged as never retrieved
    (an adopted step's outcome is the adopter's)."""
    if not task.cancelled():
        task.exception()
