"""Errors of the run event streams, in the `loomwork.errors` family.

`server/transport/errors.py` maps them to gRPC statuses:

- `OutOfRange`       -> OUT_OF_RANGE (an `after_event_id` above the run's last event id)
- `EventsExpired`    -> FAILED_PRECONDITION (a subclass: the events asked for were trimmed/expired)
- `FollowIdle`       -> DEADLINE_EXCEEDED (a follower waited `idle_timeout` without an event)

Appending to a finished run raises the plain `loomwork.errors.FailedPrecondition`, and
appending to a draft that was taken over `DraftTaken` (a FailedPrecondition too; it stays
inside the process that drafted). Redis unreachable (a refused or broken connection, a
timeout) is `loomwork.errors.Unavailable` (`redis_unavailable`): retryable, UNAVAILABLE.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

from loomwork.errors import DeadlineExceeded, FailedPrecondition, Unavailable
from loomwork.errors import OutOfRange as OutOfRangeError


@contextmanager
def redis_unavailable(what: str) -> Iterator[None]:
    """Redis unreachable inside the block (connection refused or lost, a timeout; what the
    client raises once its own retries are spent) as `Unavailable`, naming `what` was used."""
    try:
        yield
    except (RedisConnectionError, RedisTimeoutError) as exc:
        raise Unavailable(f"{what}: Redis is unreachable ({exc})") from exc


class OutOfRange(OutOfRangeError):
    """`after_id` is above the highest event id published for the run."""

    def __init__(self, run_id: str, after_id: int, last_id: int) -> None:
        super().__init__(
            f"after_event_id {after_id} is beyond the last event id {last_id} of run {run_id!r}"
        )
        self.run_id = run_id
        self.after_id = after_id
        self.last_id = last_id


class EventsExpired(FailedPrecondition):
    """Some events after `after_id` are no longer stored (trimmed by `max_events`)."""

    def __init__(self, run_id: str, after_id: int, first_available: int) -> None:
        super().__init__(
            f"events {after_id + 1}..{first_available - 1} of run {run_id!r} are no longer"
            " stored; resume from a later event id"
        )
        self.run_id = run_id
        self.after_id = after_id
        self.first_available = first_available


class FollowIdle(DeadlineExceeded):
    """A follower received no event for `idle_timeout` seconds (the run is still unfinished)."""

    def __init__(self, run_id: str, after_id: int, idle_timeout: float) -> None:
        super().__init__(f"no event after id {after_id} of run {run_id!r} within {idle_timeout:g}s")
        self.run_id = run_id
        self.after_id = after_id
        self.idle_timeout = idle_timeout


class DraftTaken(FailedPrecondition):
    """An event of a draft was refused: the draft was taken over (`RunEventLog.take_draft`),
    or (from `publish`) the run's log has ended."""

    def __init__(self, run_id: str, draft: str) -> None:
        super().__init__(
            f"draft {draft!r} of run {run_id!r} is over (taken over, or the run ended);"
            " its event is dropped"
        )
        self.run_id = run_id
        self.draft = draft
