"""The one relay of a run's event log to a stream (agent runs, workflow runs, ingestions,
answers): from an event id to the run's end, skipping kinds this server does not know."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, TypeVar

from opentelemetry import metrics
from pydantic import ValidationError
from temporalio.client import WorkflowHandle

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


async def relay_run_events(
    events: RunEventLog,
    key: str,
    run_id: str,
    after_event_id: int,
    decode: Callable[[bytes], T],
    *,
    expired_end: Callable[[], Awaitable[tuple[int, T] | None]] | None = None,
    pending: PendingNotice | None = None,
) -> AsyncIterator[tuple[int, T]]:
    """The run's events after `after_event_id` as (event id, event), to its end.

    `expired_end`, asked when the log is empty: the run's terminal event with its original
    id if the run has ended (its events expired), else None (not started yet: follow the
    log). `pending`: publish run_pending once if the stream stays quiet (no worker took the
    run); else, as after the notice, no idle limit (a run may wait hours for an approval or
    a resume: the caller's deadline governs).
    """
    if expired_end is not None and await events.last_id(key) == 0:
        end = await expired_end()
        if end is not None:
            if end[0] > after_event_id:
                yield end
            return
    cursor = after_event_id
    watch = pending is not None
    following_since = datetime.now(UTC)
    while True:
        idle = pending.after_seconds if pending is not None and watch else None
        try:
            async for event in events.follow(key, cursor, idle_timeout=idle):
                cursor = event.event_id
                decoded = known_event(decode, event.payload, run_id, cursor)
                if decoded is not None:
                    record_relay_lag(decoded, following_since)
                    yield cursor, decoded
            return
        except FollowIdle:
            watch = False
            if pending is not None and cursor >= 1:  # after run_started, never in its place
                await pending.publish(events, key, run_id, cursor)
