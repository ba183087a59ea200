"""The DynamoDB storage adapter: one table (pk/sk strings), strongly consistent reads.

The caller owns the client: an aiobotocore / aioboto3 low-level DynamoDB client, e.g.

    async with aioboto3.Session().client("dynamodb", endpoint_url=...) as client:
        storage = DynamoMemoryStorage(client, table="loomwork")
        await storage.ensure_table()

Items (`tk` is the tenant as `<len>:<tenant>`, so tenants containing '#' cannot collide;
numbers in sort keys are zero-padded to 20 digits so they sort as strings):

    pk=C#<tk>                    sk=#           n: the per-tenant monotonic seq counter
    pk=T#<tk>#<thread>           sk=#           the thread: seq, resource_id, title,
                                                metadata (codec), message_count, ct, ut
    pk=L#<tk>                    sk=<seq>       id: a thread, for newest-first listing
    pk=R#<tk>#<resource>         sk=<seq>       id: the same, per resource id
    pk=M#<tk>#<thread seq>       sk=<seq>       id, role, body (codec): one message
    pk=I#<tk>#<message id>       sk=#           thread, tseq, seq: who holds a message id

Messages live under the thread's *seq* (its incarnation), not its id: a thread deleted
and created again under the same id starts empty even if a sweep of the old messages
was interrupted, and an id record naming a dead incarnation counts as free.

Atomicity: create, delete and append are each one `TransactWriteItems` of conditional
writes. An append writes, for every new message, its id record (condition: free or
held by a dead incarnation) and its message item, plus the thread's count/update
time (condition: the same incarnation still exists and its message_count is the one
read, so appends to one thread commit one at a time in seq order and oldest-first
paging never skips a message) — 2 items per new message + 1,
and a transaction holds at most 100, so an append may carry at most
`MAX_APPEND_MESSAGES` (49) messages; more is refused with InvalidArgument naming
`messages` rather than split into non-atomic chunks. A transaction cancelled by a
concurrent writer is re-planned (it re-reads, so a racing same-id append becomes
idempotent or AlreadyExists). Seqs are reserved with an atomic counter (UpdateItem
ADD) before the transaction; a cancelled transaction leaves a gap, never a reuse.

Deleting a thread removes the thread and its listing items in one transaction, then
sweeps its messages and id records (id records conditionally, so one already taken
by a new thread is left alone).
"""

from __future__ import annotations

import asyncio
import random
from datetime import UTC, datetime, timedelta
from typing import Any

from loomwork.errors import AlreadyExists, InvalidArgument, NotFound, Unavailable
from loomwork.ids import new_id
from loomwork.messages import Message, NewMessage, NewThread, Thread, ThreadUpdate
from loomwork.storage import codec

MAX_APPEND_MESSAGES = 49  # (100 transaction items - 1 thread update) // 2 items per message
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_HEAD = "#"
_RETRIES = 25  # optimistic rounds of one append; each lost round means another won

Item = dict[str, dict[str, Any]]


def _now_us() -> int:
    return (datetime.now(UTC) - _EPOCH) // timedelta(microseconds=1)


def _time(us: int | str) -> datetime:
    return _EPOCH + timedelta(microseconds=int(us))


def _seq_key(seq: int) -> str:
    return f"{seq:020d}"


def _s(value: str) -> dict[str, str]:
    return {"S": value}


def _n(value: int) -> dict[str, str]:
    return {"N": str(value)}


def _b(value: bytes) -> dict[str, bytes]:
    return {"B": value}


def _key(pk: str, sk: str = _HEAD) -> Item:
    return {"pk": _s(pk), "sk": _s(sk)}


def _error_code(exc: Exception) -> str:
    response = getattr(exc, "response", None) or {}
    return str(response.get("Error", {}).get("Code", ""))


def _thread(item: Item) -> Thread:
    return Thread(
        id=item["id"]["S"],
        resource_id=item["resource_id"]["S"],
        title=item["title"]["S"],
        metadata=codec.decode(item["metadata"]["B"]),
        message_count=int(item["message_count"]["N"]),
        create_time=_time(item["ct"]["N"]),
        update_time=_time(item["ut"]["N"]),
    )


def _message(thread_id: str, item: Item) -> Message:
    body = codec.decode(item["body"]["B"])
    return Message(
        id=item["id"]["S"],
        thread_id=thread_id,
        role=item["role"]["S"],
        parts=body["parts"],
        metadata=body.get("metadata", {}),
        create_time=_time(item["ct"]["N"]),
    )


class _Retry(Exception):
    """A transaction lost a race; plan it again."""


class DynamoMemoryStorage:
    """`MemoryStorage` on one DynamoDB table (see the module docstring for the layout)."""

    def __init__(self, client: Any, *, table: str = "loomwork") -> None:
        self.client = client
        self.table = table

    # -- keys ---------------------------------------------------------------------------

    @staticmethod
    def _tk(tenant: str) -> str:
        return f"{len(tenant)}:{tenant}"

    def _thread_pk(self, tenant: str, thread_id: str) -> str:
        return f"T#{self._tk(tenant)}#{thread_id}"

    def _list_pk(self, tenant: str, resource_id: str | None) -> str:
        if resource_id is None:
            return f"L#{self._tk(tenant)}"
        return f"R#{self._tk(tenant)}#{resource_id}"

    def _messages_pk(self, tenant: str, thread_seq: int) -> str:
        return f"M#{self._tk(tenant)}#{thread_seq}"

    def _id_pk(self, tenant: str, message_id: str) -> str:
        return f"I#{self._tk(tenant)}#{message_id}"

    # -- table --------------------------------------------------------------------------

    async def ensure_table(self) -> None:
        """Create the table (on-demand billing) unless it exists; wait until it is active."""
        try:
            await self.client.create_table(
                TableName=self.table,
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
            if _error_code(exc) != "ResourceInUseException":
                raise
        waiter = self.client.get_waiter("table_exists")
        await waiter.wait(TableName=self.table, WaiterConfig={"Delay": 1, "MaxAttempts": 60})

    # -- helpers ------------------------------------------------------------------------

    async def _get(self, key: Item) -> Item | None:
        answer = await self.client.get_item(TableName=self.table, Key=key, ConsistentRead=True)
        item: Item | None = answer.get("Item")
        return item

    async def _thread_item(self, tenant: str, thread_id: str) -> Item:
        item = await self._get(_key(self._thread_pk(tenant, thread_id)))
        if item is None:
            raise NotFound(f"thread {thread_id!r} not found")
        return item

    async def _next_seqs(self, tenant: str, count: int) -> int:
        """Reserve `count` seqs; returns the last (the first is last - count + 1)."""
        answer = await self.client.update_item(
            TableName=self.table,
            Key=_key(f"C#{self._tk(tenant)}"),
            UpdateExpression="ADD #n :k",
            ExpressionAttributeNames={"#n": "n"},
            ExpressionAttributeValues={":k": _n(count)},
            ReturnValues="UPDATED_NEW",
        )
        return int(answer["Attributes"]["n"]["N"])

    async def _transact(self, items: list[dict[str, Any]]) -> list[str] | None:
        """Run a transaction; None on success, else the per-item cancellation codes."""
        try:
            await self.client.transact_write_items(TransactItems=items)
        except Exception as exc:
            if _error_code(exc) != "TransactionCanceledException":
                raise
            reasons = getattr(exc, "response", {}).get("CancellationReasons") or []
            return [str(r.get("Code", "None")) for r in reasons] or ["Unknown"]
        return None

    async def _query(
        self, pk: str, *, limit: int, forward: bool, sk_cond: tuple[str, str] | None = None
    ) -> list[Item]:
        """Up to `limit` items of partition `pk` in sk order, following pages."""
        expr = "#pk = :pk"
        names = {"#pk": "pk"}
        values: dict[str, Any] = {":pk": _s(pk)}
        if sk_cond is not None:
            expr += f" AND #sk {sk_cond[0]} :sk"
            names["#sk"] = "sk"
            values[":sk"] = _s(sk_cond[1])
        items: list[Item] = []
        start: Item | None = None
        while len(items) < limit:
            kwargs: dict[str, Any] = {
                "TableName": self.table,
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

    async def _batch_get(self, keys: list[Item]) -> list[Item]:
        """Items for `keys` (in any order; missing ones left out), strongly consistent."""
        found: list[Item] = []
        for i in range(0, len(keys), 100):
            pending: dict[str, Any] = {
                self.table: {"Keys": keys[i : i + 100], "ConsistentRead": True}
            }
            while pending:
                answer = await self.client.batch_get_item(RequestItems=pending)
                found += answer.get("Responses", {}).get(self.table, [])
                pending = answer.get("UnprocessedKeys") or {}
        return found

    # -- threads ------------------------------------------------------------------------

    async def create_thread(self, tenant: str, thread: NewThread) -> Thread:
        if await self._get(_key(self._thread_pk(tenant, thread.id))) is not None:
            raise AlreadyExists(f"thread {thread.id!r} already exists")
        seq = await self._next_seqs(tenant, 1)
        now = _now_us()
        item: Item = {
            **_key(self._thread_pk(tenant, thread.id)),
            "id": _s(thread.id),
            "seq": _n(seq),
            "resource_id": _s(thread.resource_id),
            "title": _s(thread.title),
            "metadata": _b(codec.encode(thread.metadata)),
            "message_count": _n(0),
            "ct": _n(now),
            "ut": _n(now),
        }
        pointer = {"id": _s(thread.id)}
        failed = await self._transact(
            [
                {
                    "Put": {
                        "TableName": self.table,
                        "Item": item,
                        "ConditionExpression": "attribute_not_exists(#pk)",
                        "ExpressionAttributeNames": {"#pk": "pk"},
                    }
                },
                {
                    "Put": {
                        "TableName": self.table,
                        "Item": {**_key(self._list_pk(tenant, None), _seq_key(seq)), **pointer},
                    }
                },
                {
                    "Put": {
                        "TableName": self.table,
                        "Item": {
                            **_key(self._list_pk(tenant, thread.resource_id), _seq_key(seq)),
                            **pointer,
                        },
                    }
                },
            ]
        )
        if failed is not None:
            raise AlreadyExists(f"thread {thread.id!r} already exists")
        return _thread(item)

    async def get_thread(self, tenant: str, thread_id: str) -> Thread:
        return _thread(await self._thread_item(tenant, thread_id))

    async def list_threads(
        self, tenant: str, *, resource_id: str | None, limit: int, before_seq: int | None
    ) -> list[tuple[int, Thread]]:
        if limit <= 0:
            return []
        cond = None if before_seq is None else ("<", _seq_key(before_seq))
        pointers = await self._query(
            self._list_pk(tenant, resource_id), limit=limit, forward=False, sk_cond=cond
        )
        keys = [_key(self._thread_pk(tenant, p["id"]["S"])) for p in pointers]
        by_seq = {int(item["seq"]["N"]): item for item in await self._batch_get(keys)}
        rows = []
        for pointer in pointers:
            seq = int(pointer["sk"]["S"])
            item = by_seq.get(seq)  # a thread deleted meanwhile (or recreated) drops out
            if item is not None:
                rows.append((seq, _thread(item)))
        return rows

    async def update_thread(self, tenant: str, thread_id: str, update: ThreadUpdate) -> Thread:
        sets = ["#ut = :ut"]
        names = {"#ut": "ut", "#pk": "pk"}
        values: dict[str, Any] = {":ut": _n(_now_us())}
        if update.title is not None:
            sets.append("#title = :title")
            names["#title"] = "title"
            values[":title"] = _s(update.title)
        if update.metadata is not None:
            sets.append("#md = :md")
            names["#md"] = "metadata"
            values[":md"] = _b(codec.encode(update.metadata))
        try:
            answer = await self.client.update_item(
                TableName=self.table,
                Key=_key(self._thread_pk(tenant, thread_id)),
                UpdateExpression="SET " + ", ".join(sets),
                ConditionExpression="attribute_exists(#pk)",
                ExpressionAttributeNames=names,
                ExpressionAttributeValues=values,
                ReturnValues="ALL_NEW",
            )
        except Exception as exc:
            if _error_code(exc) == "ConditionalCheckFailedException":
                raise NotFound(f"thread {thread_id!r} not found") from exc
            raise
        return _thread(answer["Attributes"])

    async def delete_thread(self, tenant: str, thread_id: str) -> None:
        item = await self._thread_item(tenant, thread_id)
        seq = int(item["seq"]["N"])
        failed = await self._transact(
            [
                {
                    "Delete": {
                        "TableName": self.table,
                        "Key": _key(self._thread_pk(tenant, thread_id)),
                        "ConditionExpression": "#seq = :seq",
                        "ExpressionAttributeNames": {"#seq": "seq"},
                        "ExpressionAttributeValues": {":seq": _n(seq)},
                    }
                },
                {
                    "Delete": {
                        "TableName": self.table,
                        "Key": _key(self._list_pk(tenant, None), _seq_key(seq)),
                    }
                },
                {
                    "Delete": {
                        "TableName": self.table,
                        "Key": _key(self._list_pk(tenant, item["resource_id"]["S"]), _seq_key(seq)),
                    }
                },
            ]
        )
        if failed is not None:
            raise NotFound(f"thread {thread_id!r} not found")
        await self._sweep(tenant, seq)

    async def _sweep(self, tenant: str, thread_seq: int) -> None:
        """Remove a dead incarnation's messages and the id records it still holds."""
        pk = self._messages_pk(tenant, thread_seq)
        while True:
            page = await self._query(pk, limit=100, forward=True)
            if not page:
                return
            await asyncio.gather(
                *(self._release_id(tenant, m["id"]["S"], thread_seq) for m in page)
            )
            requests = [{"DeleteRequest": {"Key": _key(pk, m["sk"]["S"])}} for m in page]
            for i in range(0, len(requests), 25):
                pending: dict[str, Any] = {self.table: requests[i : i + 25]}
                while pending:
                    answer = await self.client.batch_write_item(RequestItems=pending)
                    pending = answer.get("UnprocessedItems") or {}

    async def _release_id(self, tenant: str, message_id: str, thread_seq: int) -> None:
        try:
            await self.client.delete_item(
                TableName=self.table,
                Key=_key(self._id_pk(tenant, message_id)),
                ConditionExpression="#tseq = :tseq",
                ExpressionAttributeNames={"#tseq": "tseq"},
                ExpressionAttributeValues={":tseq": _n(thread_seq)},
            )
        except Exception as exc:
            if _error_code(exc) != "ConditionalCheckFailedException":
                raise

    # -- messages -----------------------------------------------------------------------

    async def append_messages(
        self, tenant: str, thread_id: str, messages: list[NewMessage]
    ) -> list[Message]:
        if len(messages) > MAX_APPEND_MESSAGES:
            raise InvalidArgument.field(
                "messages",
                f"the DynamoDB store appends at most {MAX_APPEND_MESSAGES} messages at once",
            )
        ids = [m.id or new_id("msg") for m in messages]
        for _ in range(_RETRIES):
            try:
                return await self._append_once(tenant, thread_id, messages, ids)
            except _Retry:
                await asyncio.sleep(random.uniform(0, 0.02))
        raise Unavailable(f"append to thread {thread_id!r} kept losing races; try again")

    async def _append_once(
        self, tenant: str, thread_id: str, messages: list[NewMessage], ids: list[str]
    ) -> list[Message]:
        thread = await self._thread_item(tenant, thread_id)
        tseq = int(thread["seq"]["N"])
        first: dict[str, int] = {}
        for index, message_id in enumerate(ids):
            first.setdefault(message_id, index)
        holders = {
            item["pk"]["S"]: item
            for item in await self._batch_get([_key(self._id_pk(tenant, i)) for i in first])
        }
        kept: dict[str, Item] = {}  # ids this incarnation already holds -> their message keys
        stale: dict[str, int] = {}  # ids held by a dead incarnation -> its seq
        for message_id, index in first.items():
            holder = holders.get(self._id_pk(tenant, message_id))
            if holder is None:
                continue
            holder_tseq = int(holder["tseq"]["N"])
            if holder_tseq == tseq:
                kept[message_id] = _key(self._messages_pk(tenant, tseq), holder["sk2"]["S"])
                continue
            other = holder["thread"]["S"]
            if other != thread_id:
                alive = await self._get(_key(self._thread_pk(tenant, other)))
                if alive is not None and int(alive["seq"]["N"]) == holder_tseq:
                    raise AlreadyExists(
                        f"messages[{index}].id {message_id!r} is already used in another thread"
                    )
            stale[message_id] = holder_tseq
        new = [i for i in first if i not in kept]
        stored: dict[str, Item] = {}
        if kept:
            for found in await self._batch_get(list(kept.values())):
                stored[found["id"]["S"]] = found
            if len(stored) < len(kept):
                raise _Retry()  # swept meanwhile: the thread was deleted, re-check it
        if new:
            last = await self._next_seqs(tenant, len(new))
            now = _now_us()
            pk = self._messages_pk(tenant, tseq)
            writes: list[dict[str, Any]] = []
            for offset, message_id in enumerate(new):
                message = messages[first[message_id]]
                sk = _seq_key(last - len(new) + 1 + offset)
                item: Item = {
                    **_key(pk, sk),
                    "id": _s(message_id),
                    "role": _s(message.role.value),
                    "ct": _n(now),
                    "body": _b(
                        codec.encode(
                            {
                                "parts": [p.model_dump(mode="json") for p in message.parts],
                                "metadata": message.metadata,
                            }
                        )
                    ),
                }
                stored[message_id] = item
                claim: dict[str, Any] = {
                    "TableName": self.table,
                    "Item": {
                        **_key(self._id_pk(tenant, message_id)),
                        "thread": _s(thread_id),
                        "tseq": _n(tseq),
                        "sk2": _s(sk),
                    },
                }
                if message_id in stale:
                    claim["ConditionExpression"] = "#tseq = :old"
                    claim["ExpressionAttributeNames"] = {"#tseq": "tseq"}
                    claim["ExpressionAttributeValues"] = {":old": _n(stale[message_id])}
                else:
                    claim["ConditionExpression"] = "attribute_not_exists(#pk)"
                    claim["ExpressionAttributeNames"] = {"#pk": "pk"}
                writes.append({"Put": claim})
                writes.append({"Put": {"TableName": self.table, "Item": item}})
            writes.append(
                {
                    "Update": {
                        "TableName": self.table,
                        "Key": _key(self._thread_pk(tenant, thread_id)),
                        "UpdateExpression": "ADD #mc :k SET #ut = :ut",
                        "ConditionExpression": "#seq = :tseq AND #mc = :mc",
                        "ExpressionAttributeNames": {
                            "#mc": "message_count",
                            "#ut": "ut",
                            "#seq": "seq",
                        },
                        "ExpressionAttributeValues": {
                            ":k": _n(len(new)),
                            ":ut": _n(now),
                            ":tseq": _n(tseq),
                            ":mc": thread["message_count"],
                        },
                    }
                }
            )
            if await self._transact(writes) is not None:
                raise _Retry()  # an id was claimed or the thread changed meanwhile
        return [_message(thread_id, stored[i]) for i in ids]

    async def last_messages(self, tenant: str, thread_id: str, n: int) -> list[Message]:
        thread = await self._thread_item(tenant, thread_id)
        if n <= 0:
            return []
        pk = self._messages_pk(tenant, int(thread["seq"]["N"]))
        items = await self._query(pk, limit=n, forward=False)
        return [_message(thread_id, item) for item in reversed(items)]

    async def list_messages(
        self, tenant: str, thread_id: str, *, limit: int, after_seq: int | None
    ) -> list[tuple[int, Message]]:
        thread = await self._thread_item(tenant, thread_id)
        if limit <= 0:
            return []
        pk = self._messages_pk(tenant, int(thread["seq"]["N"]))
        items = await self._query(
            pk, limit=limit, forward=True, sk_cond=(">", _seq_key(after_seq or 0))
        )
        return [(int(item["sk"]["S"]), _message(thread_id, item)) for item in items]

    async def ping(self) -> bool:
        try:
            await self.client.describe_table(TableName=self.table)
        except Exception:
            return False
        return True
