"""Concurrent-run slots: a run started by RPC takes one of its tenant's slots (table
`run_slots`) as it starts, so a burst of starts is counted at once, on every replica.

A slot is given back lazily: when the tenant has reached its limit, each slot's run is
looked up (Temporal, through `still_open`) and the slots of runs that have ended are freed.
A slot whose run Temporal does not know yet is kept for `START_GRACE` (its start may still
be under way), then freed (its start failed).
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime, timedelta
from typing import Any

import psycopg

from loomwork.storage.database import Database

START_GRACE = timedelta(seconds=60)
LOOKUPS_AT_ONCE = 16
# True: the run's workflow is open; False: it closed; None: Temporal has no such workflow.
StillOpen = Callable[[str], Awaitable[bool | None]]


class RunSlots:
    def __init__(self, db: Database) -> None:
        self.db = db

    async def claim(self, tenant: str, workflow_id: str, limit: int, still_open: StillOpen) -> int:
        """Take a slot for the run `workflow_id` (kept if it holds one already); 0 when taken,
        else the number of the tenant's runs under way (all `limit` slots held)."""
        async with self.db.connection() as conn, conn.transaction():
            # A slot is bookkeeping, not a record to keep: no wait for the disk (a crash of
            # the database may forget the last moment's slots, never invent one).
            await conn.execute("set local synchronous_commit = off")
            # One claim of a tenant at a time, across every replica.
            await conn.execute(
                "select pg_advisory_xact_lock(hashtextextended(%s, 0))", (f"run_slots/{tenant}",)
            )
            cur = await conn.execute(
                "select count(*) as held, coalesce(bool_or(workflow_id = %s), false) as mine"
                " from run_slots where tenant_id = %s",
                (workflow_id, tenant),
            )
            row = await cur.fetchone()
            assert row is not None
            if row["mine"]:
                return 0
            if row["held"] >= limit:
                running = await self._sweep(
                    conn, tenant, await self._held(conn, tenant), still_open
                )
                if running >= limit:
                    return running
            await conn.execute(
                "insert into run_slots (tenant_id, workflow_id) values (%s, %s)",
                (tenant, workflow_id),
            )
        return 0

    async def under_way(self, tenant: str, still_open: StillOpen) -> int:
        """How many of the tenant's slots are held by runs still under way (the others are
        freed on the way)."""
        async with self.db.connection() as conn:
            held = await self._held(conn, tenant)
            return await self._sweep(conn, tenant, held, still_open) if held else 0

    async def release(self, tenant: str, workflow_id: str) -> None:
        """Give the slot back (the run's start was refused)."""
        async with self.db.connection() as conn, conn.transaction():
            await conn.execute("set local synchronous_commit = off")
            await conn.execute(
                "delete from run_slots where tenant_id = %s and workflow_id = %s",
                (tenant, workflow_id),
            )

    @staticmethod
    async def _held(conn: psycopg.AsyncConnection[Any], tenant: str) -> dict[str, datetime]:
        """The tenant's slots: when each was taken, by workflow id."""
        cur = await conn.execute(
            "select workflow_id, create_time from run_slots where tenant_id = %s", (tenant,)
        )
        return {row["workflow_id"]: row["create_time"] for row in await cur.fetchall()}

    async def _sweep(
        self,
        conn: psycopg.AsyncConnection[Any],
        tenant: str,
        held: dict[str, datetime],
        still_open: StillOpen,
    ) -> int:
        """Free the slots of `held` whose runs ended; how many stay held."""
        ended = await self._ended(held, still_open)
        if ended:
            await conn.execute(
                "delete from run_slots where tenant_id = %s and workflow_id = any(%s)",
                (tenant, ended),
            )
        return len(held) - len(ended)

    @staticmethod
    async def _ended(held: dict[str, datetime], still_open: StillOpen) -> list[str]:
        ids = list(held)
        gate = asyncio.Semaphore(LOOKUPS_AT_ONCE)

        async def state(workflow_id: str) -> bool | None:
            async with gate:
                return await still_open(workflow_id)

        states = await asyncio.gather(*(state(i) for i in ids))
        now = datetime.now(UTC)
        return [
            i
            for i, state in zip(ids, states, strict=True)
            if state is False or (state is None and now - held[i] > START_GRACE)
        ]
