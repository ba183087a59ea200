"""One blocking reader per process for every followed run log (`RunEventLog.follow`).

A follower used to hold a Redis connection of its own in an XREAD BLOCK: 200 open streams
were 200 connections, each opened during the burst that opened the streams, and one read
(one round trip, one reply parsed) per event per stream. Here one task reads every followed
stream in one `XREAD BLOCK ... STREAMS k1 k2 ... id1 id2 ...` and hands each follower the
entries after its own cursor.

A follower that arrives while the reader is blocked on a read without its stream wakes it
by adding an entry to the reader's own wake stream (`wake_key`, read in the same XREAD,
from the last wake entry it saw): an entry added before Redis runs the read is returned at
once, one added after wakes it, so no wake is lost to the race between the two. A
follower that stops taking entries (a slow client) is left out of the reads once `count`
entries wait for it, and put back when it has taken them: what it has not read stays in
Redis, as before.

The reader ends when nobody follows and starts again with the next follower. A read that
fails fails every follower it was reading for, as its own read would have (`Unavailable`
when Redis is unreachable; `MAX_LATE_REPLIES` replies in a row that came after the socket
gave up count as unreachable); the next follower starts a new reader.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable
from typing import Any

from redis.asyncio import Redis
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

from loomwork.errors import Unavailable

log = logging.getLogger(__name__)

# Blocking reads in a row whose reply came too late before the followers give up.
MAX_LATE_REPLIES = 3
# How long a wake entry (the reader's own stream) is kept after the last one.
WAKE_TTL_SECONDS = 3600


class Follower:
    """One follower's place in the shared reads: the entries read for it, not yet taken."""

    __slots__ = ("_waiter", "cursor", "entries", "error", "key", "label", "paused")

    def __init__(self, key: str, cursor: int, label: str) -> None:
        self.key = key
        self.label = label  # what the follower reads, for errors
        self.cursor = cursor  # the last entry id read for it (taken or not)
        self.entries: list[tuple[int, dict[bytes, bytes]]] = []
        self.error: BaseException | None = None
        self.paused = False
        self._waiter: asyncio.Future[None] | None = None

    def _wake(self) -> None:
        if self._waiter is not None and not self._waiter.done():
            self._waiter.set_result(None)


class SharedReader:
    """Reads every followed stream of one Redis in one blocking XREAD, in one task.

    `client()` is the Redis client for the blocking reads (asked at each read); `waker` the
    client that adds wake entries (short commands). `block_ms` is each read's wait, `count`
    the entries read per stream per read (and the most that wait for one follower).
    """

    def __init__(
        self,
        client: Callable[[], Redis],
        waker: Redis,
        wake_key: str,
        *,
        block_ms: int,
        count: int = 500,
    ) -> None:
        self._client = client
        self._waker = waker
        self.wake_key = wake_key
        self.block_ms = block_ms
        self.count = count
        self._followers: dict[str, list[Follower]] = {}
        self._task: asyncio.Task[None] | None = None
        self._wake_cursor = b"0-0"
        self._reading = 0  # the number of the read in flight (0: none)
        self._woken = 0  # the read a wake entry was added for
        self._reads = 0
        self._wakes: set[asyncio.Task[None]] = set()

    @property
    def followers(self) -> int:
        """How many followers the reader reads for."""
        return sum(len(group) for group in self._followers.values())

    def follow(self, key: str, cursor: int, label: str) -> Follower:
        """Read the entries of stream `key` after id `cursor` for a new follower (`label`
        names what it reads in errors); `leave` it when done."""
        follower = Follower(key, cursor, label)
        self._followers.setdefault(key, []).append(follower)
        if self._task is None or self._task.done():
            self._task = asyncio.get_running_loop().create_task(
                self._run(), name="loomwork shared stream reader"
            )
        else:
            self._wake()
        return follower

    def leave(self, follower: Follower) -> None:
        """Stop reading for `follower` (the reads drop its stream once nobody else follows it)."""
        group = self._followers.get(follower.key)
        if group is None:
            return
        with contextlib.suppress(ValueError):
            group.remove(follower)
        if not group:
            del self._followers[follower.key]

    async def next_entries(
        self, follower: Follower, wait_seconds: float
    ) -> list[tuple[int, dict[bytes, bytes]]] | None:
        """The entries read for `follower` since it last asked, in order, waiting up to
        `wait_seconds` for some (None: none came). Raises what failed the reads."""
        if not follower.entries and follower.error is None:
            loop = asyncio.get_running_loop()
            waiter = follower._waiter = loop.create_future()
            timer = loop.call_later(wait_seconds, _settle, waiter)
            try:
                await waiter
            finally:
                timer.cancel()
                follower._waiter = None
        if follower.entries:
            entries, follower.entries = follower.entries, []
            if follower.paused:
                follower.paused = False
                self._wake()
            return entries
        if follower.error is not None:
            raise follower.error
        return None

    # the reading task ---------------------------------------------------

    def _wake(self) -> None:
        """Make the read in flight return, once per read, so the next one reads what changed
        (a new follower, one that can take entries again)."""
        if not self._reading or self._woken == self._reading:
            return  # no read in flight (the next one reads it all), or woken already
        self._woken = self._reading
        task = asyncio.get_running_loop().create_task(self._add_wake_entry())
        self._wakes.add(task)
        task.add_done_callback(self._wakes.discard)

    async def _add_wake_entry(self) -> None:
        try:
            async with self._waker.pipeline(transaction=False) as pipe:
                pipe.xadd(self.wake_key, {"w": "1"}, maxlen=1, approximate=False)
                pipe.expire(self.wake_key, WAKE_TTL_SECONDS)
                await pipe.execute()
        except Exception as error:  # the read then ends on its own (block_ms), or fails
            log.info("could not wake the shared stream reader: %s", error)

    async def _run(self) -> None:
        late_replies = 0
        try:
            while self._followers:
                # Each stream from the lowest cursor among its followers (those taking entries).
                starts: dict[str, int] = {}
                for key, group in self._followers.items():
                    reading = [f.cursor for f in group if not f.paused]
                    if reading:
                        starts[key] = min(reading)
                streams: dict[Any, Any] = {key: f"{start}-0" for key, start in starts.items()}
                streams[self.wake_key] = self._wake_cursor
                client = self._client()
                self._reads += 1
                self._reading = self._reads
                try:
                    response: Any = await client.xread(
                        streams, count=self.count, block=self.block_ms
                    )
                except RedisTimeoutError as error:
                    # The reply came after the socket gave up (a loop busy for longer than
                    # the margin left below socket_timeout): read again, from the same
                    # cursors; nothing is lost. After a few in a row: unreachable.
                    late_replies += 1
                    if late_replies >= MAX_LATE_REPLIES:
                        self._fail(error, "Redis: no reply to a read of {label}")
                        return
                    continue
                finally:
                    self._reading = 0
                late_replies = 0
                self._deliver(response, starts)
        except RedisConnectionError as error:
            self._fail(error, "the event log of {label}: Redis is unreachable (" + str(error) + ")")
        except Exception as error:
            self._fail(error)
        except BaseException as error:  # cancelled (the loop ends): its followers hear it
            self._fail(error, "the reads of {label} were stopped")
            raise
        finally:
            self._reading = 0

    def _deliver(self, response: Any, starts: dict[str, int]) -> None:
        """Hand each follower the entries after its cursor, of the streams read from at or
        below it (one that came, or took entries again, after the read was sent with a
        higher cursor would see a gap: the next read is for it)."""
        for key, entries in _streams_of(response):
            name = key.decode() if isinstance(key, bytes) else str(key)
            if not entries:
                continue
            if name == self.wake_key:
                last = entries[-1][0]
                self._wake_cursor = last if isinstance(last, bytes) else str(last).encode()
                continue
            group = self._followers.get(name)
            if not group:
                continue  # left while the read was in flight
            numbered = [(_entry_number(entry_id), fields) for entry_id, fields in entries]
            start = starts.get(name)
            for follower in group:
                if follower.paused or start is None or follower.cursor < start:
                    continue
                new = [entry for entry in numbered if entry[0] > follower.cursor]
                if not new:
                    continue
                follower.entries.extend(new)
                follower.cursor = new[-1][0]
                if len(follower.entries) >= self.count:
                    follower.paused = True
                follower._wake()

    def _fail(self, cause: BaseException, unavailable: str = "") -> None:
        """Fail every follower: with an Unavailable of its own saying `unavailable` (where
        `{label}` names what it reads), caused by `cause`; without, with `cause` itself. Each
        leaves the reads (a follower that comes later starts a new reader)."""
        for group in self._followers.values():
            for follower in group:
                failure = cause
                if unavailable:
                    failure = Unavailable(unavailable.replace("{label}", follower.label))
                    failure.__cause__ = cause
                follower.error = failure
                follower._wake()
        self._followers.clear()


def _settle(waiter: asyncio.Future[None]) -> None:
    if not waiter.done():
        waiter.set_result(None)


def _entry_number(entry_id: Any) -> int:
    raw = entry_id if isinstance(entry_id, bytes) else str(entry_id).encode()
    return int(raw.partition(b"-")[0])


def _streams_of(response: Any) -> list[tuple[Any, list[Any]]]:
    """(stream, entries) of a many-stream XREAD reply (RESP2: a list of pairs; RESP3: a
    dict of stream to a list holding the entries)."""
    if not response:
        return []
    if isinstance(response, dict):
        return [(key, value[0] if value else []) for key, value in response.items()]
    return [(key, entries) for key, entries in response]
