"""Which store holds memory (`LOOMWORK_MEMORY_STORE`): opening it, and keeping it.

PostgreSQL is always there (vectors, runs, agents); threads, messages and working memory
live in the chosen store. A deployment records its store in PostgreSQL the first time it
starts, and a later start with another store is refused: it would serve an empty memory
while the real one sits in the old store.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from contextlib import AsyncExitStack
from dataclasses import dataclass
from typing import Any

from redis.asyncio import Redis
from redis.exceptions import ResponseError

from loomwork.config import Settings, redis_options
from loomwork.errors import FailedPrecondition
from loomwork.storage.adapter import MemoryStorage
from loomwork.storage.codec import StorageCodec
from loomwork.storage.database import Database
from loomwork.storage.postgres import PostgresMemoryStorage
from loomwork.storage.redis_adapter import RedisMemoryStorage

log = logging.getLogger(__name__)

DYNAMODB_EXTRA = "pip install 'loomwork[dynamodb]'"


@dataclass
class OpenedStore:
    """The chosen store and how to let go of its connections. `health_check` (name, probe)
    is set for a store that health does not probe already (PostgreSQL and Redis it does)."""

    storage: MemoryStorage
    label: str
    close: Callable[[], Awaitable[None]]
    health_check: tuple[str, Callable[[], Awaitable[bool]]] | None = None


def storage_codec(settings: Settings) -> StorageCodec:
    """The write path's serialization as settings say."""
    return StorageCodec(settings.storage_compression, settings.storage_compression_threshold)


def store_label(settings: Settings) -> str:
    """The store as recorded and shown: its name, and for DynamoDB its table."""
    if settings.memory_store == "dynamodb":
        return f"dynamodb table {settings.dynamodb_table}"
    return settings.memory_store


async def open_memory_store(settings: Settings, db: Database) -> OpenedStore:
    """Connect the store `settings.memory_store` names (DynamoDB: creating its table if
    missing), after checking it is the one this deployment's memory lives in."""
    label = store_label(settings)
    await claim_memory_store(db, label)
    codec = storage_codec(settings)
    stack = AsyncExitStack()
    try:
        storage: MemoryStorage
        if settings.memory_store == "redis":
            storage = await _open_redis(settings, codec, stack)
        elif settings.memory_store == "dynamodb":
            storage = await _open_dynamodb(settings, codec, stack)
        else:
            storage = PostgresMemoryStorage(db, codec=codec)
    except BaseException:
        await stack.aclose()
        raise
    log.info("memory store: %s (%r)", label, codec)
    check = ("dynamodb", storage.ping) if settings.memory_store == "dynamodb" else None
    return OpenedStore(storage, label, stack.aclose, check)


async def _open_redis(settings: Settings, codec: StorageCodec, stack: AsyncExitStack) -> Any:
    if not settings.redis_url:
        raise FailedPrecondition("LOOMWORK_MEMORY_STORE=redis needs REDIS_URL")
    client = Redis.from_url(
        settings.redis_url, **redis_options(), socket_timeout=5, socket_connect_timeout=2
    )
    stack.push_async_callback(client.aclose)
    try:
        config: dict[Any, Any] = await client.config_get("appendonly")
    except ResponseError:  # CONFIG refused (managed Redis): durability is the operator's call
        config = {}
    if (config.get(b"appendonly") or config.get("appendonly")) in (b"no", "no"):
        log.warning(
            "LOOMWORK_MEMORY_STORE=redis on a server without AOF (appendonly no): a restart "
            "loses memory written since the last snapshot; set appendonly yes, "
            "appendfsync everysec"
        )
    return RedisMemoryStorage(client, codec=codec)


async def _open_dynamodb(settings: Settings, codec: StorageCodec, stack: AsyncExitStack) -> Any:
    try:
        import aioboto3  # an extra: only this store needs it
    except ImportError:
        raise FailedPrecondition(
            f"LOOMWORK_MEMORY_STORE=dynamodb needs aioboto3, which is not installed: "
            f"{DYNAMODB_EXTRA}"
        ) from None
    from botocore.config import Config
    from botocore.exceptions import BotoCoreError

    from loomwork.storage.dynamodb import DynamoMemoryStorage

    # Fail over to Temporal's retries soon rather than hang a call on a dead endpoint.
    config = Config(
        connect_timeout=2, read_timeout=10, retries={"mode": "standard", "max_attempts": 3}
    )
    try:
        client = await stack.enter_async_context(
            aioboto3.Session().client(
                "dynamodb", endpoint_url=settings.aws_endpoint_url, config=config
            )
        )
    except BotoCoreError as exc:  # no region, a malformed endpoint: say what to set
        raise FailedPrecondition(
            f"LOOMWORK_MEMORY_STORE=dynamodb: {exc} (set AWS_REGION, and AWS_ENDPOINT_URL "
            "for a DynamoDB-compatible endpoint)"
        ) from exc
    storage = DynamoMemoryStorage(client, table=settings.dynamodb_table, codec=codec)
    await storage.ensure_table()
    return storage


async def claim_memory_store(db: Database, label: str) -> None:
    """Record `label` as this deployment's memory store, or refuse it if another one is
    recorded (or, with none recorded, if PostgreSQL already holds threads)."""
    async with db.connection() as conn, conn.transaction():
        await conn.execute("lock table loomwork_settings in share row exclusive mode")
        cur = await conn.execute(
            "select value, update_time from loomwork_settings where name = 'memory_store'"
        )
        row = await cur.fetchone()
        if row is not None:
            if row["value"] != label:
                raise FailedPrecondition(
                    f"this deployment's memory is in {row['value']} (since "
                    f"{row['update_time']:%Y-%m-%d}), not {label}: starting on {label} would "
                    f"serve an empty memory. Set LOOMWORK_MEMORY_STORE (and "
                    f"LOOMWORK_DYNAMODB_TABLE) back, or use a new LOOMWORK_HOME / database."
                )
            return
        if label != "postgres":
            cur = await conn.execute("select exists (select 1 from threads) as used")
            used = await cur.fetchone()
            if used is not None and used["used"]:
                raise FailedPrecondition(
                    f"this deployment's memory is in postgres (it holds threads already), "
                    f"not {label}: starting on {label} would serve an empty memory. Unset "
                    "LOOMWORK_MEMORY_STORE, or use a new LOOMWORK_HOME / database."
                )
        await conn.execute(
            "insert into loomwork_settings (name, value) values ('memory_store', %s)", (label,)
        )
