"""Event ids that survive the loss of a run's log: ceilings reserved durably, in blocks.

A log hands out ids only up to a ceiling (`ceil` in its meta hash) that was first reserved
in durable storage. When Redis loses the log (a restart without persistence, a failover,
FLUSHALL), the next append finds no ceiling, reserves the next block, and the log goes on
above the old ceiling: no id a watcher already saw names another event. A normal run
reserves once (its first append), and again per `block` events.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Protocol

#: Ids reserved at a time: a run with fewer events reserves once.
BLOCK = 1000

# KEYS[1] meta hash. ARGV[1] the new ceiling, ARGV[2] the block size, ARGV[3] "1" if the
# reservation was the log's first ever. A log without a ceiling whose reservation was not its
# first lost its keys: its ids go on above the block before (`last`), and `lost` says that
# ids up to there are gone (a follower's cursor may jump over them). Answers 0 (a higher
# ceiling was there), 1 (raised) or 2 (raised, and the ids jump over the lost ones).
RAISE_LUA = """
local ceil = tonumber(redis.call('HGET', KEYS[1], 'ceil') or '0')
local c = tonumber(ARGV[1])
if ceil >= c then
  return 0
end
redis.call('HSET', KEYS[1], 'ceil', c)
if ceil == 0 and ARGV[3] == '0' then
  local base = c - tonumber(ARGV[2])
  local last = tonumber(redis.call('HGET', KEYS[1], 'last') or '0')
  if last < base then
    redis.call('HSET', KEYS[1], 'last', base, 'lost', base)
    return 2
  end
end
return 1
"""


class IdCeilings(Protocol):
    """Durable id ceilings of event logs (PostgreSQL: `loomwork.storage.event_ceilings`)."""

    block: int

    async def reserve(self, log: str, apply: Callable[[int, bool], Awaitable[None]]) -> None:
        """Raise the log's ceiling by `block` and call `apply(ceiling, first)` (`first`: the
        log had none before) while no other reservation of the log can run, so the log's
        Redis side sees its ceilings in the order they were reserved. An error from `apply`
        undoes the reservation."""
        ...

    async def reserve_new(self, log: str) -> tuple[int, bool]:
        """Raise the ceiling of a log nobody else appends to yet (a run being accepted) by
        `block`: the new ceiling, and whether the log had none before. Its Redis side is
        then raised by its first append, so no order is kept between reservations."""
        ...

    async def ceiling(self, log: str) -> int:
        """The log's durable ceiling: every id it ever gave out is at most this (0: none)."""
        ...

    async def forget(self, log: str) -> None:
        """Drop the log's ceiling (its log was discarded: the run never started)."""
        ...
