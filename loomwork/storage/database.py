"""The PostgreSQL connection pool (psycopg 3, async)."""

from __future__ import annotations

import logging
from contextlib import AbstractAsyncContextManager
from typing import Any

import psycopg
from psycopg.rows import dict_row
from psycopg_pool import AsyncConnectionPool

from loomwork.errors import Unavailable

log = logging.getLogger(__name__)


class Database:
    """An async psycopg pool; `connection()` lends a connection (dict rows)."""

    def __init__(self, url: str, *, min_size: int = 1, max_size: int = 10) -> None:
        self.url = url
        self.pool: AsyncConnectionPool = AsyncConnectionPool(
            url,
            min_size=min_size,
            max_size=max_size,
            kwargs={"row_factory": dict_row, "autocommit": True},
            open=False,
            name="loomwork",
        )

    async def open(self, *, wait_seconds: float = 30.0) -> None:
        try:
            await self.pool.open(wait=True, timeout=wait_seconds)
        except Exception as exc:
            raise Unavailable(f"cannot connect to PostgreSQL: {exc}") from exc

    async def close(self) -> None:
        await self.pool.close()

    def connection(
        self, timeout: float | None = None
    ) -> AbstractAsyncContextManager[psycopg.AsyncConnection[Any]]:
        """`async with db.connection() as conn:`; use `conn.transaction()` for writes."""
        return _Lease(self.pool, timeout)

    async def ping(self) -> bool:
        """True when a trivial query answers."""
        try:
            async with self.connection(timeout=2.0) as conn:
                await conn.execute("select 1")
            return True
        except (psycopg.Error, OSError, Exception):  # any failure means 'not reachable'
            return False


class _Lease:
    """Borrow a pool connection for one `async with`.

    Leaner than `pool.connection()`: connections are in autocommit mode, so there is nothing
    to commit on the way out (`conn.transaction()` blocks end their own transactions), and
    `putconn` already discards broken connections and rolls back any left in a transaction.
    """

    __slots__ = ("_conn", "_pool", "_timeout")

    def __init__(self, pool: AsyncConnectionPool, timeout: float | None) -> None:
        self._pool = pool
        self._timeout = timeout
        self._conn: psycopg.AsyncConnection[Any] | None = None

    async def __aenter__(self) -> psycopg.AsyncConnection[Any]:
        self._conn = await self._pool.getconn(self._timeout)
        return self._conn

    async def __aexit__(self, *exc_info: object) -> None:
        conn, self._conn = self._conn, None
        if conn is not None:
            await self._pool.putconn(conn)
