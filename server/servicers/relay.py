"""The one relay of a run's event log to a stream (agent runs, workflow runs, ingestions,
answers): from an event id to the run's end, skipping kinds this server does not know, with
keep-alives while the run is quiet."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from enum import StrEnum
from typing import Any, TypeVar

from opentelemetry import metrics
from pydantic import ValidationError
from temporalio.client import WorkflowHandle

from loomwork.errors import LoomworkError
from loomwork.streams import FollowIdle
from loomwork.streams.run_events import RunEventLog
from server.temporal import pending_wait

log = logging.getLogger(__name__)

T = TypeVar("T")

_relay_lag = metrics.get_meter("loomwork.relay").create_histogram(
    "loomwork.event_relay.lag",
    unit="s",
    description="From an event's publication to its relay to a stream (events published "
    "while the stream was open).",
    explicit_bucket_boundaries_advisory=[0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1, 5],
)


def record_relay_lag(event: object, following_since: datetime) -> None:
    """How late a live event (published after the stream began following) is relayed."""
    published = getattr(event, "time", None)
    if isinstance(published, datetime) and published >= following_since:
        _relay_lag.record(max(0.0, (datetime.now(UTC) - published).total_seconds()))


def known_event(
    decode: Callable[[bytes], T], payload: bytes, run_id: str, event_id: int
) -> T | None:
    """The event as this server knows it, or None for a kind it does not (a newer server's,
    during a rolling upgrade): relays leave it out, with a warning, and send the rest."""
    try:
        return decode(payload)
    except ValidationError:
        log.warning(
            "run %s: event %d is of a kind this server does not know; not sent", run_id, event_id
        )
        return None


@dataclass(frozen=True)
class PendingNotice:
    """Tell the stream, once per run, that no worker has taken the run `after_seconds` after
    the stream went quiet: `encode(task_queue, waited_seconds)` is the run_pending event."""

    handle: WorkflowHandle[Any, Any]
    after_seconds: float
    encode: Callable[[str, float], bytes]

    async def publish(self, events: RunEventLog, key: str, run_id: str, last_event_id: int) -> None:
        """Publish run_pending as the run's next event if no worker has taken it yet."""
        waiting = await pending_wait(self.handle, run_id)
        if waiting is None:
            return
        # Only as the next event: a worker that took the run meanwhile publishes first; and
        # once per run, however many watch it. (`publish`: a run that ended meanwhile takes
        # no notice, and that is no error.)
        await events.publish(
            key, self.encode(*waiting), only_as=last_event_id + 1, once="run_pending", patience=0
        )


# How often a quiet stream asks whether its run's workflow closed without a terminal event,
# and how long it waits for the answer (a Temporal that does not answer: it asks again later).
CLOSED_CHECK_SECONDS = 5.0
CLOSED_CHECK_TIMEOUT = 15.0
# How long a keep-alive waits for Temporal to say whether the run is open: past it the
# keep-alive goes out saying UNKNOWN (a watcher hears from a stream whatever Temporal does).
LIVENESS_TIMEOUT = 2.0


class RunLiveness(StrEnum):
    """Whether a run's workflow is open, as Temporal says; UNKNOWN when it cannot be asked."""

    OPEN = "open"
    CLOSED = "closed"
    UNKNOWN = "unknown"


@dataclass(frozen=True, slots=True)
class KeepAlive:
    """Not an event of the run: a quiet stream's sign of life. `last_event_id` is the last
    event the stream sent (its cursor, which a keep-alive never moves)."""

    last_event_id: int
    liveness: RunLiveness
    time: datetime


@dataclass(frozen=True)
class KeepAlives:
    """Send a KeepAlive each time the stream has been quiet for `every_seconds`. Its
    liveness comes from the relay's closed-run check (the same question to Temporal, which
    then counts as that check); UNKNOWN for a stream that has none."""

    every_seconds: float


@dataclass(frozen=True)
class ClosedRunEnd:
    """How a stream ends whose run's workflow closed without publishing its terminal event
    (an operator terminated it, it timed out, or it failed outside its steps): `terminal()`
    is that event's payload once the workflow has closed, None while it runs. Asked each time
    the stream has been quiet for `every_seconds`, and first thing with `at_start`; the event
    is published as the log's terminal event, so every watcher gets the same one."""

    terminal: Callable[[], Awaitable[bytes | None]]
    every_seconds: float = CLOSED_CHECK_SECONDS
    at_start: bool = False

    async def end_if_closed(
        self, events: RunEventLog, key: str, wait_seconds: float = CLOSED_CHECK_TIMEOUT
    ) -> RunLiveness:
        """Publish the terminal event if the log has none and the workflow has closed, and
        say whether it has. A check Temporal cannot answer now (within `wait_seconds`) is
        left for the next one: the stream goes on (UNKNOWN)."""
        if await events.is_finished(key):
            return RunLiveness.CLOSED
        try:
            payload = await asyncio.wait_for(self.terminal(), wait_seconds)
        except (LoomworkError, TimeoutError) as error:
            log.info("run log %s: could not tell whether its run has closed: %s", key, error)
            return RunLiveness.UNKNOWN
        if payload is None:
            return RunLiveness.OPEN
        await events.publish(key, payload, terminal=True, patience=0)
        return RunLiveness.CLOSED


# A timer counts as due this close to its time (a wait may end a hair early on the clock).
_DUE_SLACK = 0.001


async def relay_run_events(
    events: RunEventLog,
    key: str,
    run_id: str,
    after_event_id: int,
    decode: Callable[[bytes], T],
    *,
    expired_end: Callable[[], Awaitable[tuple[int, T] | None]] | None = None,
    pending: PendingNotice | None = None,
    closed: ClosedRunEnd | None = None,
    keep_alive: KeepAlives | None = None,
) -> AsyncIterator[tuple[int, T] | KeepAlive]:
    """The run's events after `after_event_id` as (event id, event), to its end.

    `expired_end`, asked when the log is empty: the run's terminal event with its original
    id if the run has ended (its events expired), else None (not started yet: follow the
    log). `pending`: publish run_pending once if the stream stays quiet (no worker took the
    run). `closed`: end the stream if the run's workflow closed without its terminal event.
    `keep_alive`: a KeepAlive (never stored, moving no cursor) after each quiet period.
    No idle limit otherwise (a run may wait hours for an approval or a resume: the caller's
    deadline governs).
    """
    if expired_end is not None and await events.last_id(key) == 0:
        end = await expired_end()
        if end is not None:
            if end[0] > after_event_id:
                yield end
            return
    if closed is not None and closed.at_start:
        await closed.end_if_closed(events, key)
    loop = asyncio.get_running_loop()
    cursor = after_event_id
    notice_due = pending is not None
    # When the stream last sent an event (or began), last asked about a closed run, and last
    # sent a keep-alive: each timer runs from the later of its own last time and the event.
    last_event = last_check = last_alive = loop.time()
    following_since = datetime.now(UTC)
    while True:
        timers: list[float] = []
        if closed is not None:
            timers.append(max(last_event, last_check) + closed.every_seconds)
        if keep_alive is not None:
            timers.append(max(last_event, last_alive) + keep_alive.every_seconds)
        if pending is not None and notice_due:
            timers.append(last_event + pending.after_seconds)
        idle = max(min(timers) - loop.time(), 0.01) if timers else None
        try:
            async for event in events.follow(key, cursor, idle_timeout=idle):
                cursor = event.event_id
                decoded = known_event(decode, event.payload, run_id, cursor)
                if decoded is not None:
                    record_relay_lag(decoded, following_since)
                    yield cursor, decoded
                last_event = loop.time()
            return
        except FollowIdle:
            now = loop.time() + _DUE_SLACK
            if pending is not None and notice_due and now >= last_event + pending.after_seconds:
                notice_due = False
                if cursor >= 1:  # after run_started, never in its place
                    await pending.publish(events, key, run_id, cursor)
            # When the next keep-alive is due (None: the stream sends none).
            alive_at = (
                None
                if keep_alive is None
                else max(last_event, last_alive) + keep_alive.every_seconds
            )
            liveness: RunLiveness | None = None
            if closed is not None and (
                (alive_at is not None and now >= alive_at)
                or now >= max(last_event, last_check) + closed.every_seconds
            ):
                # Never past the next keep-alive's time by more than its own wait: an answer
                # Temporal is slow to give is UNKNOWN, and that keep-alive says so on time.
                wait = CLOSED_CHECK_TIMEOUT
                if alive_at is not None:
                    wait = min(wait, max(alive_at - now, 0.0) + LIVENESS_TIMEOUT)
                liveness = await closed.end_if_closed(events, key, wait)
                last_check = loop.time()
            if (
                keep_alive is not None
                and alive_at is not None
                and loop.time() + _DUE_SLACK >= alive_at
            ):
                if liveness is None:
                    liveness = RunLiveness.UNKNOWN
                yield KeepAlive(cursor, liveness, datetime.now(UTC))
                last_alive = loop.time()
