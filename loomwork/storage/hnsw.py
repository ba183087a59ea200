"""pgvector's HNSW scan settings on a pooled connection, sent only when they change.

`hnsw.ef_search` (the candidate list; speed against recall) and `hnsw.iterative_scan`
(pgvector 0.8: a filtered scan keeps going until enough rows pass the filter) are session
settings. Every search that uses HNSW (RAG Query, semantic recall) sets them through here,
so one search never runs with the settings another left on the connection.
"""

from __future__ import annotations

from typing import Any

_STATE = "_loomwork_hnsw_settings"  # (ef_search, iterative_scan) the connection has


async def use_hnsw(conn: Any, ef_search: int, iterative_scan: str) -> None:
    """Give `conn` these settings (one round trip, none when it has them already)."""
    wanted = (int(ef_search), iterative_scan)
    if getattr(conn, _STATE, None) == wanted:
        return
    await conn.execute(
        "select set_config('hnsw.ef_search', %s, false),"
        " set_config('hnsw.iterative_scan', %s, false)",
        (str(wanted[0]), wanted[1]),
    )
    setattr(conn, _STATE, wanted)
