"""Numbered, resumable event logs of durable runs, on Redis streams.

One log per run, shared by agent runs, RAG answers, ingestions and workflow
runs: payloads are opaque bytes (callers serialize their own event models).

Storage, per run (the `{run_id}` hash tag keeps both keys on one cluster slot):

- `<prefix>:{<run_id>}:meta`: a hash; `last` is the highest event id published,
  `finished` (present once the run ended) the id of its terminal event, `o:<name>`
  the id of the event published `once` under that name, and `d:<name>` the state of a
  draft (`drafted` once one of its events was appended, `taken` once it was taken over).
- `<prefix>:{<run_id>}:events`: a stream; event `n` is the entry with the explicit
  id `n-0` and fields `p` (payload) and `t` (`1` for the terminal event).

Event ids are the stream ids' millisecond part, so they start at 1, are dense,
order like the stream, and "resume after event k" is plain `XREAD ... k-0`
(exclusive), with no lookup table. One Lua script assigns the id and writes
the entry, so concurrent appenders to one run still produce 1..N with no gap
and no duplicate; the script writes nothing when it fails (XADD runs before
the counter moves). The terminal append marks the run finished and sets the
retention TTL on both keys together; appending after it is FailedPrecondition.

While a run is active its keys have no TTL. `max_events` caps a stream with
approximate trimming (`MAXLEN ~`, so at least `max_events` are kept); a reader
asking for trimmed events gets `EventsExpired` rather than a silent gap. Once
a finished run's keys have expired the log looks like a run that never
published (`last_id` 0): the service layer answers from the run record.

With `ceilings` (durable id ceilings, `id_ceilings`), a log hands out ids only below a
ceiling reserved in durable storage first (`ceil` in the meta hash; the append script
answers -2 when the next id is above it): a log Redis lost goes on above the old ceiling,
so ids stay unique and increasing for its watchers, and `lost` in the meta hash marks
where the ids jump (readers accept that one gap; a cursor below the durable ceiling of a
lost log is waited on, not out of range).

Redis unreachable is `Unavailable` from every method. An append whose reply was lost
(the connection broke after Redis ran it) can be sent again safely: each append carries a
random token, and the script answers a token it stored among the run's latest appends
(`r` in the meta hash) with the id it got then, instead of appending twice. `publish`, the
steps' way in, sends again while Redis is unreachable, for up to `write_patience` seconds,
so an outage that short only delays the step.
"""

from __future__ import annotations

import asyncio
import logging
import os
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from typing import Any, TypeVar

from redis.asyncio import Redis
from redis.exceptions import ResponseError

from loomwork.errors import FailedPrecondition, InvalidArgument, Unavailable
from loomwork.streams.errors import (
    DraftTaken,
    EventsExpired,
    FollowIdle,
    OutOfRange,
    redis_unavailable,
)
from loomwork.streams.id_ceilings import RAISE_LUA, IdCeilings
from loomwork.streams.run_event_scripts import APPEND_LUA, TAKE_DRAFT_LUA
from loomwork.streams.shared_reader import MAX_LATE_REPLIES, SharedReader

log = logging.getLogger(__name__)

T = TypeVar("T")

_FINISHED_ERROR = "LOOMWORK_RUN_FINISHED"
# The shared reader's wait per read (cut below the client's socket timeout) and the entries
# it reads per stream at a time.
FOLLOW_BLOCK_MS = 5000
FOLLOW_COUNT = 500

__all__ = ["MAX_LATE_REPLIES", "RunEvent", "RunEventLog"]

#: How long `publish` keeps trying while Redis is unreachable (seconds).
WRITE_PATIENCE = 20.0
_FIRST_PAUSE, _LONGEST_PAUSE = 0.1, 2.0  # between tries of `publish`, doubling


@dataclass(frozen=True, slots=True)
class RunEvent:
    """One published event: its id in the run (1, 2, 3, ...), opaque payload, terminal flag."""

    event_id: int
    payload: bytes
    terminal: bool


class RunEventLog:
    """Append, read and follow the numbered event logs of runs.

    `redis` must return bytes (`decode_responses=False`, the default). Followers
    (`follow`) share one blocking reader per event loop (`shared_reader`): one
    connection of `blocking_redis` (default: `redis`) in one XREAD BLOCK for all of
    them, its wait cut to below the client's `socket_timeout`, if it has one. `publish` keeps
    trying for `write_patience` seconds while Redis is unreachable. With `ceilings`, ids
    outlive the loss of the log (see the module's docstring).
    """

    def __init__(
        self,
        redis: Redis,
        *,
        blocking_redis: Redis | None = None,
        prefix: str = "loomwork:run",
        retention_seconds: int = 86400,
        max_events: int = 100_000,
        write_patience: float = WRITE_PATIENCE,
        ceilings: IdCeilings | None = None,
    ) -> None:
        for client in (redis, blocking_redis):
            if client is not None and client.connection_pool.connection_kwargs.get(
                "decode_responses"
            ):
                raise ValueError("RunEventLog needs a Redis client with decode_responses=False")
        if retention_seconds <= 0:
            raise ValueError("retention_seconds must be positive")
        if max_events < 0:
            raise ValueError("max_events must be >= 0 (0: no cap)")
        if write_patience < 0:
            raise ValueError("write_patience must be >= 0 (0: one try)")
        self.redis = redis
        self.blocking_redis = blocking_redis or redis
        self.prefix = prefix
        self.retention_seconds = retention_seconds
        self.max_events = max_events
        self.write_patience = write_patience
        self.ceilings = ceilings
        self._append_script = redis.register_script(APPEND_LUA)
        self._raise_script = redis.register_script(RAISE_LUA)
        self._take_draft_script = redis.register_script(TAKE_DRAFT_LUA)
        self._reader: SharedReader | None = None
        self._reader_loop: asyncio.AbstractEventLoop | None = None

    # keys ---------------------------------------------------------------

    def meta_key(self, run_id: str) -> str:
        return f"{self.prefix}:{{{run_id}}}:meta"

    def stream_key(self, run_id: str) -> str:
        return f"{self.prefix}:{{{run_id}}}:events"

    # writing ------------------------------------------------------------

    async def append(
        self,
        run_id: str,
        payload: bytes,
        *,
        terminal: bool = False,
        only_as: int = 0,
        once: str = "",
        draft: str = "",
    ) -> int:
        """Publish one event and return its id; `terminal` ends the run's log.

        With `only_as`, the event is published only if it gets that id (the log has
        `only_as - 1` events): otherwise nothing is written and the answer is 0. Two callers
        racing to open a run's log with `only_as=1` publish one event between them.
        With `once`, a name for what the event says, it is published once per run: a repeat
        (a retried step publishing it again) writes nothing and answers the first one's id,
        even after the run ended. With `draft`, the event is part of that draft: appended only
        while the draft is not taken (`take_draft`), else nothing is written and DraftTaken
        is raised."""
        _check_append(run_id, only_as)
        return await self._append(run_id, payload, terminal, only_as, once, draft, _token())

    async def _append(
        self,
        run_id: str,
        payload: bytes,
        terminal: bool,
        only_as: int,
        once: str,
        draft: str,
        token: str,
        first_ceiling: int = 0,
    ) -> int:
        """One try of `append`; the same `token` on a repeat answers the first try's id.
        `first_ceiling`: the log's first ceiling, just reserved (`reserve_new`), to set."""
        args = [
            payload,
            "1" if terminal else "0",
            self.retention_seconds,
            self.max_events,
            only_as,
            once,
            draft,
            token,
            "1" if self.ceilings is not None else "0",
            str(first_ceiling) if first_ceiling else "",
        ]
        try:
            while True:
                with redis_unavailable(f"the event log of run {run_id!r}"):
                    result = await self._append_script(
                        keys=[self.meta_key(run_id), self.stream_key(run_id)], args=args
                    )
                if result != -2:
                    break
                await self._reserve(run_id)
        except ResponseError as exc:
            if _FINISHED_ERROR in str(exc):
                raise FailedPrecondition(
                    f"run {run_id!r} has finished; its event log takes no more events"
                ) from exc
            raise
        if result == -1:
            raise DraftTaken(run_id, draft)
        return int(result)

    async def _reserve(self, run_id: str) -> None:
        """Reserve the log's next block of ids durably, then let its Redis side use it."""
        assert self.ceilings is not None

        async def apply(ceiling: int, first: bool) -> None:
            await self._raise(run_id, ceiling, first)

        await self.ceilings.reserve(run_id, apply)

    async def _reserve_new(self, run_id: str) -> int:
        """Reserve a new log's first block of ids durably: its ceiling, for its first append
        to set (0: the log had a ceiling already, now raised)."""
        assert self.ceilings is not None
        ceiling, first = await self.ceilings.reserve_new(run_id)
        if first:
            return ceiling
        await self._raise(run_id, ceiling, first)
        return 0

    async def _raise(self, run_id: str, ceiling: int, first: bool) -> None:
        """Let the log's Redis side use ids up to a `ceiling` reserved durably."""
        assert self.ceilings is not None
        block = self.ceilings.block
        with redis_unavailable(f"the event log of run {run_id!r}"):
            raised = await self._raise_script(
                keys=[self.meta_key(run_id)], args=[ceiling, block, "1" if first else "0"]
            )
        if raised == 2:
            log.warning(
                "run %s: its event log was lost; its ids go on above %d", run_id, ceiling - block
            )

    async def _lost_below(self, run_id: str) -> int:
        """The id up to which the log's events were lost (0: none were)."""
        with redis_unavailable(f"the event log of run {run_id!r}"):
            lost = await self.redis.hget(self.meta_key(run_id), "lost")
        return int(lost or 0)

    async def _may_continue(self, run_id: str, after_id: int) -> bool:
        """Whether a cursor above the log's last id is one a watcher may hold of a log Redis
        lost (at most the ids it gave out before): then its next events are waited for."""
        # One read: the first append after a loss sets `ceil`, `last` and `lost` at once,
        # and may run between the caller's read of `last` and this one.
        with redis_unavailable(f"the event log of run {run_id!r}"):
            last, lost, ceil = await self.redis.hmget(
                self.meta_key(run_id), ["last", "lost", "ceil"]
            )
        if after_id <= max(int(last or 0), int(lost or 0)):
            return True
        if self.ceilings is None:
            return False
        # A log with no ceiling in Redis but one in PostgreSQL was lost, not yet reopened.
        return not ceil and after_id <= await self.ceilings.ceiling(run_id)

    async def _jumps_over_lost(self, run_id: str, cursor: int, event_id: int) -> bool:
        """Whether `event_id` after `cursor` is the first event after the log was lost."""
        lost = await self._lost_below(run_id)
        return lost > 0 and cursor <= lost and event_id == lost + 1

    async def take_draft(self, run_id: str, draft: str) -> bool:
        """Take the draft `draft` of the run over: none of its events is appended from now
        on. True if some were appended before (readers are to be told to discard them).
        A step's call: waits out Redis for `write_patience`, as `publish` does."""
        _check_run_id(run_id)
        if not draft:
            raise InvalidArgument.field("draft", "must not be empty")

        token = _token()

        async def take() -> bool:
            with redis_unavailable(f"the event log of run {run_id!r}"):
                keys = [self.meta_key(run_id)]
                return bool(await self._take_draft_script(keys=keys, args=[draft, token]))

        return await self._patiently(run_id, take, self.write_patience)

    async def publish(
        self,
        run_id: str,
        payload: bytes,
        *,
        terminal: bool = False,
        only_as: int = 0,
        once: str = "",
        draft: str = "",
        patience: float | None = None,
        new_log: bool = False,
    ) -> int:
        """`append` for the steps of a run, which Temporal may retry after they published:
        once the log has ended, a terminal event answers the id the log ended with (the one
        stored first) and any other event is dropped (0), but a draft's raises DraftTaken
        (the draft is over). While Redis is unreachable it tries again, backing off, for up
        to `patience` seconds (default `write_patience`; 0 for one try, as an RPC wants),
        then raises Unavailable (the step is retried later). `new_log`: the log is new and
        nobody else appends to it yet (a run id made by the caller, not handed out): its
        first ids are reserved with other new logs' (`reserve_new`), and this append sets
        its ceiling, saving the append that would find none and the reservation's own
        transaction."""
        _check_append(run_id, only_as)
        wait = self.write_patience if patience is None else patience
        token = _token()  # one append, however many tries
        reserved: list[int] = []  # the first ceiling, once reserved (a new log's)

        async def append() -> int:
            if new_log and self.ceilings is not None and not reserved:
                reserved.append(await self._reserve_new(run_id))
            first_ceiling = reserved[0] if reserved else 0
            return await self._append(
                run_id, payload, terminal, only_as, once, draft, token, first_ceiling
            )

        try:
            return await self._patiently(run_id, append, wait)
        except DraftTaken:
            raise
        except FailedPrecondition:
            if draft:  # nothing more of it can go in: its drafter should stop
                raise DraftTaken(run_id, draft) from None
            log.info("run %s has ended; a retried or late event is dropped", run_id)
            return await self.last_id(run_id) if terminal else 0

    async def _patiently(
        self, run_id: str, attempt: Callable[[], Awaitable[T]], patience: float
    ) -> T:
        """`attempt()` tried again, backing off, while it says Redis is unreachable, for up to
        `patience` seconds (each try must be safe to repeat)."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + patience
        pause, tries = _FIRST_PAUSE, 0
        while True:
            tries += 1
            try:
                result = await attempt()
            except Unavailable as exc:
                remaining = deadline - loop.time()
                if remaining <= 0:
                    if tries == 1:
                        raise
                    raise Unavailable(
                        f"{exc.message}; gave up after {tries} tries in {patience:g}s"
                    ) from exc
                if tries == 1:
                    log.warning(
                        "run %s: Redis unreachable, trying again for up to %gs: %s",
                        run_id,
                        patience,
                        exc.message,
                    )
                await asyncio.sleep(min(pause, remaining))
                pause = min(pause * 2, _LONGEST_PAUSE)
                continue
            if tries > 1:
                log.info("run %s: Redis answered again after %d tries", run_id, tries)
            return result

    async def discard(self, run_id: str) -> None:
        """Delete a run's log outright (a run that was announced but never started): a new
        start of the run opens it again from id 1."""
        _check_run_id(run_id)
        with redis_unavailable(f"the event log of run {run_id!r}"):
            await self.redis.delete(self.meta_key(run_id), self.stream_key(run_id))
        if self.ceilings is not None:
            await self.ceilings.forget(run_id)

    # reading ------------------------------------------------------------

    async def last_id(self, run_id: str) -> int:
        """The highest event id published for the run (0: none, or expired)."""
        last, _ = await self._meta(run_id)
        return last

    async def is_finished(self, run_id: str) -> bool:
        """Whether the run's terminal event was published (and has not expired)."""
        _, finished = await self._meta(run_id)
        return finished is not None

    async def read(self, run_id: str, after_id: int, *, count: int = 500) -> list[RunEvent]:
        """Up to `count` events with ids > `after_id`, in order, without waiting.

        Empty when `after_id` is the last id; OutOfRange when above it.
        """
        _check_run_id(run_id)
        _check_after(after_id)
        if count <= 0:
            raise InvalidArgument.field("count", "must be positive")
        with redis_unavailable(f"the event log of run {run_id!r}"):
            entries: Any = await self.redis.xrange(
                self.stream_key(run_id), min=f"{after_id + 1}-0", max="+", count=count
            )
        events = [_event(entry_id, fields) for entry_id, fields in entries]
        if events:
            first = events[0].event_id
            if first != after_id + 1 and not await self._jumps_over_lost(run_id, after_id, first):
                raise EventsExpired(run_id, after_id, first)
            return events
        last, _ = await self._meta(run_id)
        if after_id > last and not await self._may_continue(run_id, after_id):
            raise OutOfRange(run_id, after_id, last)
        return []

    async def follow(
        self,
        run_id: str,
        after_id: int = 0,
        *,
        block_ms: int = 5000,
        idle_timeout: float | None = None,
    ) -> AsyncIterator[RunEvent]:
        """Every event with id > `after_id`, in order, then live ones, until the terminal one.

        Ends at once, with nothing, when the run finished at or before
        `after_id`. OutOfRange when `after_id` is above the run's last id.
        A run without events yet is waited for. With `idle_timeout` (seconds),
        going that long without an event raises `FollowIdle` (the log is not
        finished, so returning quietly would look like a complete stream);
        `None` waits for ever. To resume, call again with the last id seen. `block_ms`: how
        long it waits for an event before it checks whether the log ended meanwhile.
        """
        _check_run_id(run_id)
        _check_after(after_id)
        if block_ms <= 0:
            raise InvalidArgument.field("block_ms", "must be positive")
        if after_id > 0:  # from the start, nothing can be out of range or already over
            last, finished = await self._meta(run_id)
            if after_id > last and not await self._may_continue(run_id, after_id):
                raise OutOfRange(run_id, after_id, last)
            if finished is not None and after_id >= finished:
                return
        reader = self._shared_reader()
        loop = asyncio.get_running_loop()
        cursor = after_id
        deadline = None if idle_timeout is None else loop.time() + idle_timeout
        follower = reader.follow(self.stream_key(run_id), cursor, f"run {run_id!r}")
        try:
            while True:
                wait = block_ms / 1000
                if deadline is not None:
                    remaining = deadline - loop.time()
                    if remaining <= 0:
                        raise FollowIdle(run_id, cursor, idle_timeout or 0.0)
                    wait = min(wait, remaining)
                entries = await reader.next_entries(follower, wait)
                if not entries:
                    # Nothing new: a finished log whose events expired meanwhile ends here.
                    _, finished = await self._meta(run_id)
                    if finished is not None and cursor >= finished:
                        return
                    continue
                for event_id, fields in entries:
                    if event_id != cursor + 1 and not await self._jumps_over_lost(
                        run_id, cursor, event_id
                    ):
                        raise EventsExpired(run_id, cursor, event_id)
                    event = RunEvent(event_id, fields.get(b"p", b""), fields.get(b"t") == b"1")
                    yield event
                    cursor = event_id
                    if event.terminal:
                        return
                if idle_timeout is not None:
                    deadline = loop.time() + idle_timeout
        finally:
            reader.leave(follower)

    def _shared_reader(self) -> SharedReader:
        """This process's one reader of the followed logs (one per event loop)."""
        loop = asyncio.get_running_loop()
        if self._reader is None or self._reader_loop is not loop:
            self._reader = SharedReader(
                lambda: self.blocking_redis,
                self.redis,
                f"{self.prefix}:follow-wake:{os.urandom(8).hex()}",
                block_ms=self._block_cap(FOLLOW_BLOCK_MS),
                count=FOLLOW_COUNT,
            )
            self._reader_loop = loop
        return self._reader

    # internals ----------------------------------------------------------

    async def _meta(self, run_id: str) -> tuple[int, int | None]:
        with redis_unavailable(f"the event log of run {run_id!r}"):
            last, finished = await self.redis.hmget(self.meta_key(run_id), ["last", "finished"])
        return int(last or 0), (int(finished) if finished is not None else None)

    def _block_cap(self, block_ms: int) -> int:
        timeout = self.blocking_redis.connection_pool.connection_kwargs.get("socket_timeout")
        if timeout:
            # Leave the reply time to arrive before the socket gives up; the server
            # times blocked clients out on its cron tick (100 ms at hz 10), not exactly.
            limit = timeout * 1000
            return max(1, min(block_ms, int(max(limit - 500, limit / 2))))
        return block_ms


def _event(entry_id: Any, fields: dict[bytes, bytes]) -> RunEvent:
    raw = entry_id if isinstance(entry_id, bytes) else str(entry_id).encode()
    return RunEvent(
        event_id=int(raw.partition(b"-")[0]),
        payload=fields.get(b"p", b""),
        terminal=fields.get(b"t") == b"1",
    )


def _token() -> str:
    """A random name for one append (48 bits: never met twice among a run's latest)."""
    return os.urandom(6).hex()


def _check_run_id(run_id: str) -> None:
    if not run_id:
        raise InvalidArgument.field("run_id", "must not be empty")


def _check_append(run_id: str, only_as: int) -> None:
    _check_run_id(run_id)
    if only_as < 0:
        raise InvalidArgument.field("only_as", "must be 0 (no condition) or an event id")


def _check_after(after_id: int) -> None:
    if after_id < 0:
        raise InvalidArgument.field("after_event_id", "must be >= 0")
