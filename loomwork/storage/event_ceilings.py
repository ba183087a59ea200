"""Event id ceilings of run logs in PostgreSQL (see `loomwork.streams.id_ceilings`)."""

from __future__ import annotations

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
