"""Working memory in the DynamoDB store's table (layout in `loomwork.storage.dynamodb`):
one item per thread or resource, replaced whole by a conditional put; a thread's is put
in a transaction that checks the thread's incarnation, and deleted with the thread."""

from __future__ import annotations

import asyncio
import random
from collections.abc import Callable
from typing import Any

from loomwork.errors import NotFound, Unavailable
from loomwork.storage import codec
from loomwork.storage.adapter import (
    StoredWorkingMemory,
    WorkingMemoryScope,
    WorkingMemoryWrite,
    version_conflict,
)
from loomwork.storage.dynamodb_table import (
    DynamoTable,
    Item,
    b,
    key,
    n,
    now_us,
    s,
    tenant_key,
    time_from_us,
)

_RETRIES = 25


def working_key(tenant: str, scope: WorkingMemoryScope, owner: str) -> Item:
    """The key of the working memory of a thread or a resource."""
    return key(f"W#{tenant_key(tenant)}#{scope[0]}#{owner}")


def _working(item: Item) -> StoredWorkingMemory:
    return StoredWorkingMemory(
        markdown=item["markdown"]["S"],
        data=codec.decode(item["data"]["B"]) if "data" in item else None,
        version=int(item["version"]["N"]),
        update_time=time_from_us(item["ut"]["N"]),
    )


class DynamoWorkingMemory:
    """Get and put working memory items; `thread_key` names a thread's item."""

    def __init__(self, table: DynamoTable, *, thread_key: Callable[[str, str], Item]) -> None:
        self.table = table
        self.thread_key = thread_key

    async def get(
        self, tenant: str, scope: WorkingMemoryScope, owner: str
    ) -> StoredWorkingMemory | None:
        wm_key = working_key(tenant, scope, owner)
        if scope == "resource":
            item = await self.table.get(wm_key)
            return None if item is None else _working(item)
        thread_key = self.thread_key(tenant, owner)
        items = {i["pk"]["S"]: i for i in await self.table.batch_get([thread_key, wm_key])}
        if thread_key["pk"]["S"] not in items:
            raise NotFound(f"thread {owner!r} not found")
        item = items.get(wm_key["pk"]["S"])
        return None if item is None else _working(item)

    async def put(
        self,
        tenant: str,
        scope: WorkingMemoryScope,
        owner: str,
        write: WorkingMemoryWrite,
        data: bytes | None,
    ) -> StoredWorkingMemory:
        """Put it whole, as `MemoryStorage.put_working_memory` (`data`: `write.data` encoded)."""
        expected_version = write.expected_version
        wm_key = working_key(tenant, scope, owner)
        name = self.table.name
        for _ in range(_RETRIES):
            checks: list[dict[str, Any]] = []
            if scope == "thread":  # the write commits only while this incarnation lives
                thread = await self.table.get(self.thread_key(tenant, owner))
                if thread is None:
                    raise NotFound(f"thread {owner!r} not found")
                checks.append(
                    {
                        "ConditionCheck": {
                            "TableName": name,
                            "Key": self.thread_key(tenant, owner),
                            "ConditionExpression": "#seq = :seq",
                            "ExpressionAttributeNames": {"#seq": "seq"},
                            "ExpressionAttributeValues": {":seq": thread["seq"]},
                        }
                    }
                )
            version = expected_version
            if version is None:
                current = await self.table.get(wm_key)
                version = 0 if current is None else int(current["version"]["N"])
            now = now_us()
            item: Item = {
                **wm_key,
                "markdown": s(write.markdown),
                "version": n(version + 1),
                "ut": n(now),
            }
            if data is not None:
                item["data"] = b(data)
            put: dict[str, Any] = {"TableName": name, "Item": item}
            if version:
                put["ConditionExpression"] = "#v = :v"
                put["ExpressionAttributeNames"] = {"#v": "version"}
                put["ExpressionAttributeValues"] = {":v": n(version)}
            else:
                put["ConditionExpression"] = "attribute_not_exists(#pk)"
                put["ExpressionAttributeNames"] = {"#pk": "pk"}
            failed = await self.table.transact([*checks, {"Put": put}])
            if failed is None:
                return _working(item)
            if failed[-1] == "ConditionalCheckFailed" and expected_version is not None:
                current = await self.table.get(wm_key)
                stored = 0 if current is None else int(current["version"]["N"])
                raise version_conflict(scope, owner, expected_version, stored)
            await asyncio.sleep(random.uniform(0, 0.02))  # the thread changed, or a race
        raise Unavailable(f"working memory of {scope} {owner!r} kept losing races; try again")
