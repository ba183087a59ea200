"""Messages waiting for their indexing (semantic recall) to be started: those stored while it
could not be (Temporal unreachable), kept in Postgres until a sweep starts it, so that no
message stays unsearchable."""

from __future__ import annotations

from collections.abc import Awaitable, Callable

from loomwork.memory.models import MessagesToIndex
from loomwork.storage.database import Database


class IndexBacklog:
    """The backlog of messages whose indexing is still to be started, oldest first."""

    def __init__(self, db: Database) -> None:
        self.db = db

    async def add(self, batch: MessagesToIndex) -> None:
        """Keep the batch's messages until a sweep starts their indexing (a message kept
        already stays as it was)."""
        async with self.db.connection() as conn, conn.transaction(), conn.cursor() as cur:
            await cur.executemany(
                "insert into message_index_backlog (tenant_id, message_id, thread_id)"
                " values (%s, %s, %s) on conflict do nothing",
                [(batch.tenant, m, batch.thread_id) for m in batch.message_ids],
            )

    async def sweep(
        self, start: Callable[[MessagesToIndex], Awaitable[object]], *, limit: int = 500
    ) -> int:
        """Start the indexing of up to `limit` kept messages, oldest first, one `start` per
        thread; each thread's messages leave the backlog once their start returned. A start
        that raises leaves its messages (and the rest) for the next sweep, and raises.
        Concurrent sweeps (other servers) skip the messages one of them holds. How many
        messages were started."""
        started, failure = 0, None
        async with self.db.connection() as conn, conn.transaction():
            cur = await conn.execute(
                "select tenant_id, thread_id, message_id from message_index_backlog"
                " order by since limit %s for update skip locked",
                (limit,),
            )
            batches: dict[tuple[str, str], list[str]] = {}
            for row in await cur.fetchall():
                key = (row["tenant_id"], row["thread_id"])
                batches.setdefault(key, []).append(row["message_id"])
            for (tenant, thread_id), message_ids in batches.items():
                try:
                    await start(
                        MessagesToIndex(tenant=tenant, thread_id=thread_id, message_ids=message_ids)
                    )
                except Exception as error:  # the rest waits for the next sweep
                    failure = error
                    break
                await conn.execute(
                    "delete from message_index_backlog"
                    " where tenant_id = %s and message_id = any(%s)",
                    (tenant, message_ids),
                )
                started += len(message_ids)
        if failure is not None:  # raised once what was started has left the backlog
            raise failure
        return started
