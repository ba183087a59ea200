"""One DynamoDB table through an aiobotocore client: typed attribute values, the table's
creation, and the reads and writes the DynamoDB store is made of (strongly consistent
reads, pages followed, unprocessed batch items retried)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

Item = dict[str, dict[str, Any]]

HEAD = "#"  # the sort key of single-item partitions
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


def now_us() -> int:
    """Microseconds since the epoch, UTC: how times are stored."""
    return (datetime.now(UTC) - _EPOCH) // timedelta(microseconds=1)


def time_from_us(us: int | str) -> datetime:
    return _EPOCH + timedelta(microseconds=int(us))


def seq_key(seq: int) -> str:
    """A seq as a sort key: zero-padded to 20 digits, so keys sort as the numbers do."""
    return f"{seq:020d}"


def s(value: str) -> dict[str, str]:
    return {"S": value}


def n(value: int) -> dict[str, str]:
    return {"N": str(value)}


def b(value: bytes) -> dict[str, bytes]:
    return {"B": value}


def key(pk: str, sk: str = HEAD) -> Item:
    return {"pk": s(pk), "sk": s(sk)}


def tenant_key(tenant: str) -> str:
    """A tenant in keys: `<len>:<tenant>`, so tenants containing '#' cannot collide."""
    return f"{len(tenant)}:{tenant}"


def error_code(exc: Exception) -> str:
    """The DynamoDB error code of a client error ("" for any other exception)."""
    response = getattr(exc, "response", None) or {}
    return str(response.get("Error", {}).get("Code", ""))


class DynamoTable:
    """A table with string keys `pk` (partition) and `sk` (sort), on-demand billing."""

    def __init__(self, client: Any, name: str) -> None:
        self.client = client
        self.name = name

    async def ensure(self) -> None:
        """Create the table unless it exists; wait until it is active."""
        try:
            await self.client.create_table(
                TableName=self.name,
                AttributeDefinitions=[
                    {"AttributeName": "pk", "AttributeType": "S"},
                    {"AttributeName": "sk", "AttributeType": "S"},
                ],
                KeySchema=[
                    {"AttributeName": "pk", "KeyType": "HASH"},
                    {"AttributeName": "sk", "KeyType": "RANGE"},
                ],
                BillingMode="PAY_PER_REQUEST",
            )
        except Exception as exc:
            if error_code(exc) != "ResourceInUseException":
                raise
        waiter = self.client.get_waiter("table_exists")
        await waiter.wait(TableName=self.name, WaiterConfig={"Delay": 1, "MaxAttempts": 60})

    async def get(self, item_key: Item) -> Item | None:
        answer = await self.client.get_item(TableName=self.name, Key=item_key, ConsistentRead=True)
        item: Item | None = answer.get("Item")
        return item

    async def increment(self, item_key: Item, attribute: str, by: int) -> int:
        """Add `by` to a number attribute atomically (created at 0); the new value."""
        answer = await self.client.update_item(
            TableName=self.name,
            Key=item_key,
            UpdateExpression="ADD #a :by",
            ExpressionAttributeNames={"#a": attribute},
            ExpressionAttributeValues={":by": n(by)},
            ReturnValues="UPDATED_NEW",
        )
        return int(answer["Attributes"][attribute]["N"])

    async def transact(self, items: list[dict[str, Any]]) -> list[str] | None:
        """Run a transaction; None on success, else the per-item cancellation codes."""
        try:
            await self.client.transact_write_items(TransactItems=items)
        except Exception as exc:
            if error_code(exc) != "TransactionCanceledException":
                raise
            reasons = getattr(exc, "response", {}).get("CancellationReasons") or []
            return [str(r.get("Code", "None")) for r in reasons] or ["Unknown"]
        return None

    async def query(
        self, pk: str, *, limit: int, forward: bool, sk_cond: tuple[str, str] | None = None
    ) -> list[Item]:
        """Up to `limit` items of partition `pk` in sk order, following pages."""
        expr = "#pk = :pk"
        names = {"#pk": "pk"}
        values: dict[str, Any] = {":pk": s(pk)}
        if sk_cond is not None:
            expr += f" AND #sk {sk_cond[0]} :sk"
            names["#sk"] = "sk"
            values[":sk"] = s(sk_cond[1])
        items: list[Item] = []
        start: Item | None = None
        while len(items) < limit:
            kwargs: dict[str, Any] = {
                "TableName": self.name,
                "KeyConditionExpression": expr,
                "ExpressionAttributeNames": names,
                "ExpressionAttributeValues": values,
                "ScanIndexForward": forward,
                "ConsistentRead": True,
                "Limit": limit - len(items),
            }
            if start is not None:
                kwargs["ExclusiveStartKey"] = start
            answer = await self.client.query(**kwargs)
            items += answer.get("Items", [])
            start = answer.get("LastEvaluatedKey")
            if start is None:
                break
        return items

    async def batch_get(self, keys: list[Item]) -> list[Item]:
        """Items for `keys` (in any order; missing ones left out), strongly consistent."""
        found: list[Item] = []
        for i in range(0, len(keys), 100):
            pending: dict[str, Any] = {
                self.name: {"Keys": keys[i : i + 100], "ConsistentRead": True}
            }
            while pending:
                answer = await self.client.batch_get_item(RequestItems=pending)
                found += answer.get("Responses", {}).get(self.name, [])
                pending = answer.get("UnprocessedKeys") or {}
        return found

    async def batch_delete(self, keys: list[Item]) -> None:
        """Delete `keys`, 25 a request, retrying what DynamoDB left unprocessed."""
        requests = [{"DeleteRequest": {"Key": k}} for k in keys]
        for i in range(0, len(requests), 25):
            pending: dict[str, Any] = {self.name: requests[i : i + 25]}
            while pending:
                answer = await self.client.batch_write_item(RequestItems=pending)
                pending = answer.get("UnprocessedItems") or {}

    async def describe(self) -> None:
        """Raises unless the table exists (the store's ping)."""
        await self.client.describe_table(TableName=self.name)
