"""Event id ceilings of run logs in PostgreSQL (see `loomwork.streams.id_ceilings`)."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable

import psycopg

from loomwork.errors import Unavailable
from loomwork.storage.database import Database
from loomwork.streams.id_ceilings import BLOCK

_RESERVE = """
insert into run_event_ceilings as c (log_key, ceiling) values (%s, %s)
on conflict (log_key) do update
    set ceiling = c.ceiling + excluded.ceiling, updated_at = now()
returning ceiling, (xmax = 0) as first
"""

# Many logs at once, in one statement (and one transaction, not waiting for the WAL flush:
# `set_config(..., true)` lasts to the statement's commit, as `set local` would).
_RESERVE_MANY = """
with _ as (select set_config('synchronous_commit', 'off', true))
insert into run_event_ceilings as c (log_key, ceiling)
select log_key, %s from _, unnest(%s::text[]) as log_key
on conflict (log_key) do update
    set ceiling = c.ceiling + excluded.ceiling, updated_at = now()
returning log_key, ceiling, (xmax = 0) as first
"""


#: How long a reservation waits for a pooled connection before it says PostgreSQL is
#: unavailable (an append then tries again, as it does while Redis is unreachable).
CONNECT_TIMEOUT = 5.0


class EventIdCeilings:
    """Each run log's ceiling, one row per log: reserved under the row's lock, so reservations
    of one log run one at a time. PostgreSQL unreachable is `Unavailable` (an append waits
    it out as it waits out Redis)."""

    def __init__(self, db: Database, *, block: int = BLOCK) -> None:
        if block <= 0:
            raise ValueError("block must be positive")
        self.db = db
        self.block = block
        # reserve_new's logs waiting for the next statement, and the task making them.
        self._waiting: dict[str, asyncio.Future[tuple[int, bool]]] = {}
        self._reserving: asyncio.Task[None] | None = None

    async def reserve(self, log: str, apply: Callable[[int, bool], Awaitable[None]]) -> None:
        try:
            async with self.db.connection(CONNECT_TIMEOUT) as conn, conn.transaction():
                # Not waiting for the WAL flush: it took most of a reservation's 8-14 ms (at
                # load ~15), on every run's first event and while holding a pooled
                # connection. The bet: PostgreSQL crashing within its WAL writer's few
                # hundred ms AND Redis losing the same run's log before the ids reach
                # disk; then a watcher could see an id twice.
                await conn.execute("set local synchronous_commit to off")
                cur = await conn.execute(_RESERVE, (log, self.block))
                row = await cur.fetchone()
                assert row is not None
                await apply(int(row["ceiling"]), bool(row["first"]))
        except psycopg.OperationalError as exc:
            raise Unavailable(f"PostgreSQL: cannot reserve event ids of {log!r}: {exc}") from exc

    async def reserve_new(self, log: str) -> tuple[int, bool]:
        """Reserve with the other new logs waiting: one statement (one pooled connection, one
        round trip) for all of them, while the one before it runs. A burst of runs accepted at
        once (200 Stream calls) would otherwise queue for the pool's connections, a
        transaction each, before any of them could send its first event."""
        if (waiting := self._waiting.get(log)) is not None:  # reserved twice: one after the other
            await asyncio.shield(waiting)
            return await self.reserve_new(log)
        future = asyncio.get_running_loop().create_future()
        self._waiting[log] = future
        reserving = self._reserving
        if reserving is None or reserving.done() or reserving.get_loop() is not future.get_loop():
            self._reserving = asyncio.create_task(self._reserve_waiting(), name="id ceilings")
        return await asyncio.shield(future)

    async def _reserve_waiting(self) -> None:
        while self._waiting:
            batch, self._waiting = self._waiting, {}
            try:
                async with self.db.connection(CONNECT_TIMEOUT) as conn:
                    cur = await conn.execute(_RESERVE_MANY, (self.block, list(batch)))
                    rows = await cur.fetchall()
            except psycopg.OperationalError as exc:
                error = Unavailable(f"PostgreSQL: cannot reserve event ids: {exc}")
                for future in batch.values():
                    future.set_exception(error)
                continue
            except Exception as exc:  # never leave a caller waiting
                for future in batch.values():
                    future.set_exception(exc)
                continue
            except asyncio.CancelledError:
                for future in batch.values():
                    future.cancel()
                raise
            for row in rows:
                batch[row["log_key"]].set_result((int(row["ceiling"]), bool(row["first"])))

    async def ceiling(self, log: str) -> int:
        try:
            async with self.db.connection(CONNECT_TIMEOUT) as conn:
                cur = await conn.execute(
                    "select ceiling from run_event_ceilings where log_key = %s", (log,)
                )
                row = await cur.fetchone()
        except psycopg.OperationalError as exc:
            raise Unavailable(f"PostgreSQL: cannot read the event ids of {log!r}: {exc}") from exc
        return int(row["ceiling"]) if row is not None else 0

    async def forget(self, log: str) -> None:
        try:
            async with self.db.connection(CONNECT_TIMEOUT) as conn:
                await conn.execute("delete from run_event_ceilings where log_key = %s", (log,))
        except psycopg.OperationalError as exc:
            raise Unavailable(f"PostgreSQL: cannot drop the event ids of {log!r}: {exc}") from exc
