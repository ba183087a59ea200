"""The storage adapters of the contract suites, one per backend, over the session's real
servers (Postgres, Valkey, the local DynamoDB endpoint), and the suites' helpers.

Loaded as a pytest plugin (tests/conftest.py); a test taking `backend` runs on each.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import aioboto3
import pytest
import redis.asyncio as aioredis

from loomwork.messages import NewMessage, NewThread, Role, TextPart
from loomwork.storage.adapter import MemoryStorage
from loomwork.storage.codec import StorageCodec
from loomwork.storage.dynamodb import DynamoMemoryStorage
from loomwork.storage.postgres import PostgresMemoryStorage
from loomwork.storage.redis_adapter import RedisMemoryStorage
from server.runtime import Runtime
from tests.support import unique

RawContent = Callable[[str, str, str], Awaitable[bytes]]


@dataclass
class Backend:
    name: str
    storage: MemoryStorage
    raw_content: RawContent  # (tenant, thread id, message id) -> the stored codec bytes
    # Another adapter on the same data, writing with another codec.
    with_codec: Callable[[StorageCodec], MemoryStorage]


# -- backends ----------------------------------------------------------------------------


@pytest.fixture(scope="session")
async def postgres_backend(runtime: Runtime) -> Backend:
    async def raw(tenant: str, thread_id: str, message_id: str) -> bytes:
        async with runtime.db.connection() as conn:
            cur = await conn.execute(
                "select content from messages where tenant_id = %s and id = %s",
                (tenant, message_id),
            )
            row = await cur.fetchone()
        assert row is not None
        return bytes(row["content"])

    return Backend(
        "postgres",
        PostgresMemoryStorage(runtime.db),
        raw,
        lambda codec: PostgresMemoryStorage(runtime.db, codec=codec),
    )


@pytest.fixture(scope="session")
async def redis_backend(embedded: dict[str, str]) -> AsyncIterator[Backend]:
    client = aioredis.Redis.from_url(embedded["REDIS_URL"])
    prefix = unique("contract")
    storage = RedisMemoryStorage(client, prefix=prefix)

    async def raw(tenant: str, thread_id: str, message_id: str) -> bytes:
        _, records, _ = storage.thread_keys(tenant, thread_id)
        value = await client.hget(records, message_id)
        assert isinstance(value, bytes)
        return value

    try:
        yield Backend(
            "redis",
            storage,
            raw,
            lambda codec: RedisMemoryStorage(client, prefix=prefix, codec=codec),
        )
    finally:
        await client.aclose()


@pytest.fixture(scope="session")
async def dynamo_backend(moto_endpoint: str) -> AsyncIterator[Backend]:
    session = aioboto3.Session(
        aws_access_key_id="testing", aws_secret_access_key="testing", region_name="us-east-1"
    )
    async with session.client("dynamodb", endpoint_url=moto_endpoint) as client:
        table = unique("loomwork")
        storage = DynamoMemoryStorage(client, table=table)
        await storage.ensure_table()
        await storage.ensure_table()  # idempotent

        async def raw(tenant: str, thread_id: str, message_id: str) -> bytes:
            claim = await storage.table.get(
                {"pk": {"S": storage.id_pk(tenant, message_id)}, "sk": {"S": "#"}}
            )
            assert claim is not None
            pk = storage.messages_pk(tenant, int(claim["tseq"]["N"]))
            item = await storage.table.get({"pk": {"S": pk}, "sk": claim["sk2"]})
            assert item is not None
            return bytes(item["body"]["B"])

        yield Backend(
            "dynamodb",
            storage,
            raw,
            lambda codec: DynamoMemoryStorage(client, table=table, codec=codec),
        )


@pytest.fixture(params=["postgres", "redis", "dynamo"])
def backend(request: pytest.FixtureRequest) -> Backend:
    value: Backend = request.getfixturevalue(f"{request.param}_backend")
    return value


def text(body: str, *, id: str = "", role: Role = Role.USER) -> NewMessage:
    return NewMessage(id=id, role=role, parts=[TextPart(text=body)])


async def thread_in(storage: MemoryStorage, tenant: str, **fields: Any) -> str:
    thread_id = fields.pop("id", None) or unique("thr")
    await storage.create_thread(tenant, NewThread(id=thread_id, **fields))
    return thread_id
