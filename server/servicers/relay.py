"""The one relay of a run's event log to a stream (agent runs, workflow runs, ingestions,
answers): from an event id to the run's end, skipping kinds this server does not know."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from datetime import UTC, datetime
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

    async def end_if_closed(self, events: RunEventLog, key: str) -> None:
        """Publish the terminal event if the log has none and the workflow has closed. A
        check Temporal cannot answer now is left for the next one: the stream goes on."""
        if await events.is_finished(key):
            return
        try:
            payload = await asyncio.wait_for(self.terminal(), CLOSED_CHECK_TIMEOUT)
        except (LoomworkError, TimeoutError) as error:
            log.info("run log %s: could not tell whether its run has closed: %s", key, error)
            return
        if payload is not None:
            await events.publish(key, payload, terminal=True, patience=0)


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
) -> AsyncIterator[tuple[int, T]]:
    """The run's events after `after_event_id` as (event id, event), to its end.

    `expired_end`, asked when the log is empty: the run's terminal event with its original
    id if the run has ended (its events expired), else None (not started yet: follow the
    log). `pending`: publish run_pending once if the stream stays quiet (no worker took the
    run). `closed`: end the stream if the run's workflow closed without its terminal event.
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
    cursor = after_event_id
    notice_due = pending is not None
    quiet = 0.0  # seconds since the last event (or the start), as far as idle periods tell
    following_since = datetime.now(UTC)
    while True:
        waits = [closed.every_seconds] if closed is not None else []
        if pending is not None and notice_due:
            waits.append(max(pending.after_seconds - quiet, 0.01))
        idle = min(waits, default=None)
        before = cursor
        try:
            async for event in events.follow(key, cursor, idle_timeout=idle):
                cursor = event.event_id
                decoded = known_event(decode, event.payload, run_id, cursor)
                if decoded is not None:
                    record_relay_lag(decoded, following_since)
                    yield cursor, decoded
            return
        except FollowIdle:
            quiet = (idle or 0.0) + (quiet if cursor == before else 0.0)
            if pending is not None and notice_due and quiet >= pending.after_seconds:
                notice_due = False
                if cursor >= 1:  # after run_started, never in its place
                    await pending.publish(events, key, run_id, cursor)
            if closed is not None:
                await closed.end_if_closed(events, key)
