"""Listing a tenant's integration records (sources, deliveries, providers, connections):
newest first, keyset-paged on their `seq` column."""

from __future__ import annotations

from typing import Any

from loomwork.errors import Violations
from loomwork.paging import decode_page_token, encode_page_token
from loomwork.storage.database import Database


def check_page_size(page_size: int, default: int = 50) -> int:
    if not 0 <= page_size <= 1000:
        v = Violations()
        v.add("page_size", "must be between 0 and 1000")
        v.raise_if_any()
    return page_size or default


async def newest_first(
    db: Database,
    table: str,
    columns: str,
    tenant: str,
    *,
    page_size: int,
    page_token: str,
    only: tuple[str, str] | None = None,
) -> tuple[list[dict[str, Any]], str]:
    """One page of `table`'s rows of `tenant` and the next page's token ('' on the last).
    `only` is (column, value): just the rows with that value there, all when it is ''.
    `table` and `columns` are the caller's constants, never input."""
    size = check_page_size(page_size)
    scope = f"{table}:{tenant}" if only is None else f"{table}:{tenant}:{only[1]}"
    cursor = decode_page_token(page_token, scope)
    narrowed = "" if only is None else f"and (%s = '' or {only[0]} = %s)"
    chosen = () if only is None else (only[1], only[1])
    async with db.connection() as conn:
        cur = await conn.execute(
            f"""
            select {columns} from {table}
            where tenant_id = %s {narrowed}
                and (%s::bigint is null or seq < %s)
            order by seq desc limit %s
            """,
            (tenant, *chosen, cursor, cursor, size + 1),
        )
        rows = await cur.fetchall()
    token = encode_page_token(rows[size - 1]["seq"], scope) if len(rows) > size else ""
    return rows[:size], token
