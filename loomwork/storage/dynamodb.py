"""The DynamoDB storage adapter: one table (pk/sk strings), strongly consistent reads.

The caller owns the client: an aiobotocore / aioboto3 low-level DynamoDB client, e.g.

    async with aioboto3.Session().client("dynamodb", endpoint_url=...) as client:
        storage = DynamoMemoryStorage(client, table="loomwork")
        await storage.ensure_table()

The table has only its primary key (no secondary index): every listing is a partition
of its own, written in the same transaction as the thread.

Items (`tk` is the tenant as `<len>:<tenant>`, so tenants containing '#' cannot collide;
numbers in sort keys are zero-padded to 20 digits so they sort as strings):

    pk=C#<tk>                    sk=#           n: the per-tenant monotonic seq counter
    pk=T#<tk>#<thread>           sk=#           the thread: seq, resource_id, title,
                                                metadata (codec), message_count, ct, ut
    pk=L#<tk>                    sk=<seq>       id: a thread, for newest-first listing
    pk=R#<tk>#<resource>         sk=<seq>       id: the same, per resource id
    pk=M#<tk>#<thread seq>       sk=<seq>       id, role, body (codec): one message
    pk=I#<tk>#<message id>       sk=#           thread, tseq, sk2 (its seq key): who holds
                                                a message id
    pk=W#<tk>#t#<thread>         sk=#           a thread's working memory: markdown, data
                                                (codec; absent for none), version, ut
    pk=W#<tk>#r#<resource>       sk=#           a resource's working memory, the same

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

Deleting a thread removes the thread, its listing items and its working memory in one
transaction, then sweeps its messages and id records (id records conditionally, so one
already taken by a new thread is left alone). A thread's working memory is written in a
transaction that checks the thread's incarnation, so none outlives its thread.
"""

from __future__ import annotations

import asyncio
import random
from collections import OrderedDict
from collections.abc import Awaitable, Callable
from typing import Any

import pydantic_core

from loomwork.errors import AlreadyExists, InvalidArgument, NotFound, Unavailable
from loomwork.ids import new_id
from loomwork.messages import MESSAGE_LIST, Message, NewMessage, NewThread, Thread, ThreadUpdate
from loomwork.storage import codec
from loomwork.storage.adapter import StoredWorkingMemory, WorkingMemoryScope, WorkingMemoryWrite
from loomwork.storage.codec import DEFAULT_CODEC, StorageCodec
from loomwork.storage.dynamodb_table import (
    DynamoTable,
    Item,
    b,
    error_code,
    key,
    n,
    now_us,
    s,
    seq_key,
    tenant_key,
    time_from_us,
)
from loomwork.storage.dynamodb_working import DynamoWorkingMemory, working_key

MAX_APPEND_MESSAGES = 49  # (100 transaction items - 1 thread update) // 2 items per message
# An item holds at most 400 KB: what a message or working memory stores must fit, keys too.
MAX_STORED_BYTES = 390 * 1024
_RETRIES = 25  # optimistic rounds of one write; each lost round means another won
_KNOWN_INCARNATIONS = 10_000


def _thread(item: Item) -> Thread:
    return Thread(
        id=item["id"]["S"],
        resource_id=item["resource_id"]["S"],
        title=item["title"]["S"],
        metadata=codec.decode(item["metadata"]["B"]),
        message_count=int(item["message_count"]["N"]),
        create_time=time_from_us(item["ct"]["N"]),
        update_time=time_from_us(item["ut"]["N"]),
    )


def _messages(thread_id: str, items: list[Item]) -> list[Message]:
    """Message items of a thread as models, in one validation."""
    fields = []
    for item in items:
        message = pydantic_core.from_json(codec.decode_json(item["body"]["B"]))
        message["id"] = item["id"]["S"]
        message["thread_id"] = thread_id
        message["role"] = item["role"]["S"]
        message["create_time"] = time_from_us(item["ct"]["N"])
        fields.append(message)
    return MESSAGE_LIST.validate_python(fields)


class _Retry(Exception):
    """A transaction lost a race; plan it again."""


class DynamoMemoryStorage:
    """`MemoryStorage` on one DynamoDB table (see the module docstring for the layout)."""

    def __init__(
        self, client: Any, *, table: str = "loomwork", codec: StorageCodec = DEFAULT_CODEC
    ) -> None:
        self.table = DynamoTable(client, table)
        self.codec = codec
        self.working = DynamoWorkingMemory(self.table, thread_key=self.thread_key)
        # (tenant, thread) -> the incarnation last read, most recent last (see _thread_messages)
        self._incarnations: OrderedDict[tuple[str, str], int] = OrderedDict()

    async def ensure_table(self) -> None:
        """Create the table (on-demand billing) unless it exists; wait until it is active."""
        await self.table.ensure()

    # -- keys ---------------------------------------------------------------------------

    def thread_key(self, tenant: str, thread_id: str) -> Item:
        """The key of a thread's item."""
        return key(self._thread_pk(tenant, thread_id))

    def _thread_pk(self, tenant: str, thread_id: str) -> str:
        return f"T#{tenant_key(tenant)}#{thread_id}"

    def _list_pk(self, tenant: str, resource_id: str | None) -> str:
        if resource_id is None:
            return f"L#{tenant_key(tenant)}"
        return f"R#{tenant_key(tenant)}#{resource_id}"

    def messages_pk(self, tenant: str, thread_seq: int) -> str:
        """The partition of one thread incarnation's messages."""
        return f"M#{tenant_key(tenant)}#{thread_seq}"

    def id_pk(self, tenant: str, message_id: str) -> str:
        """The partition of the record saying which thread holds a message id."""
        return f"I#{tenant_key(tenant)}#{message_id}"

    # -- helpers ------------------------------------------------------------------------

    async def _thread_item(self, tenant: str, thread_id: str) -> Item:
        item = await self.table.get(key(self._thread_pk(tenant, thread_id)))
        if item is None:
            raise NotFound(f"thread {thread_id!r} not found")
        return item

    async def _next_seqs(self, tenant: str, count: int) -> int:
        """Reserve `count` seqs; returns the last (the first is last - count + 1)."""
        return await self.table.increment(key(f"C#{tenant_key(tenant)}"), "n", count)

    def _encode(self, value: Any, field: str) -> bytes:
        encoded = self.codec.encode(value)
        if len(encoded) > MAX_STORED_BYTES:
            raise InvalidArgument.field(
                field,
                f"is {len(encoded) // 1024} KB stored; the DynamoDB store holds at most "
                f"{MAX_STORED_BYTES // 1024} KB (an item's limit), compressed or not",
            )
        return encoded

    # -- threads ------------------------------------------------------------------------

    async def create_thread(self, tenant: str, thread: NewThread) -> Thread:
        if await self.table.get(key(self._thread_pk(tenant, thread.id))) is not None:
            raise AlreadyExists(f"thread {thread.id!r} already exists")
        seq = await self._next_seqs(tenant, 1)
        now = now_us()
        item: Item = {
            **key(self._thread_pk(tenant, thread.id)),
            "id": s(thread.id),
            "seq": n(seq),
            "resource_id": s(thread.resource_id),
            "title": s(thread.title),
            "metadata": b(self._encode(thread.metadata, "thread.metadata")),
            "message_count": n(0),
            "ct": n(now),
            "ut": n(now),
        }
        pointer = {"id": s(thread.id)}
        name = self.table.name
        failed = await self.table.transact(
            [
                {
                    "Put": {
                        "TableName": name,
                        "Item": item,
                        "ConditionExpression": "attribute_not_exists(#pk)",
                        "ExpressionAttributeNames": {"#pk": "pk"},
                    }
                },
                {
                    "Put": {
                        "TableName": name,
                        "Item": {**key(self._list_pk(tenant, None), seq_key(seq)), **pointer},
                    }
                },
                {
                    "Put": {
                        "TableName": name,
                        "Item": {
                            **key(self._list_pk(tenant, thread.resource_id), seq_key(seq)),
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
        cond = None if before_seq is None else ("<", seq_key(before_seq))
        pointers = await self.table.query(
            self._list_pk(tenant, resource_id), limit=limit, forward=False, sk_cond=cond
        )
        keys = [key(self._thread_pk(tenant, p["id"]["S"])) for p in pointers]
        by_seq = {int(item["seq"]["N"]): item for item in await self.table.batch_get(keys)}
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
        values: dict[str, Any] = {":ut": n(now_us())}
        if update.title is not None:
            sets.append("#title = :title")
            names["#title"] = "title"
            values[":title"] = s(update.title)
        if update.metadata is not None:
            sets.append("#md = :md")
            names["#md"] = "metadata"
            values[":md"] = b(self._encode(update.metadata, "thread.metadata"))
        try:
            answer = await self.table.client.update_item(
                TableName=self.table.name,
                Key=key(self._thread_pk(tenant, thread_id)),
                UpdateExpression="SET " + ", ".join(sets),
                ConditionExpression="attribute_exists(#pk)",
                ExpressionAttributeNames=names,
                ExpressionAttributeValues=values,
                ReturnValues="ALL_NEW",
            )
        except Exception as exc:
            if error_code(exc) == "ConditionalCheckFailedException":
                raise NotFound(f"thread {thread_id!r} not found") from exc
            raise
        return _thread(answer["Attributes"])

    async def delete_thread(self, tenant: str, thread_id: str) -> None:
        item = await self._thread_item(tenant, thread_id)
        seq = int(item["seq"]["N"])
        name = self.table.name
        failed = await self.table.transact(
            [
                {
                    "Delete": {
                        "TableName": name,
                        "Key": key(self._thread_pk(tenant, thread_id)),
                        "ConditionExpression": "#seq = :seq",
                        "ExpressionAttributeNames": {"#seq": "seq"},
                        "ExpressionAttributeValues": {":seq": n(seq)},
                    }
                },
                {
                    "Delete": {
                        "TableName": name,
                        "Key": key(self._list_pk(tenant, None), seq_key(seq)),
                    }
                },
                {
                    "Delete": {
                        "TableName": name,
                        "Key": key(self._list_pk(tenant, item["resource_id"]["S"]), seq_key(seq)),
                    }
                },
                {
                    "Delete": {
                        "TableName": name,
                        "Key": working_key(tenant, "thread", thread_id),
                    }
                },
            ]
        )
        if failed is not None:
            raise NotFound(f"thread {thread_id!r} not found")
        await self._sweep(tenant, seq)

    async def _sweep(self, tenant: str, thread_seq: int) -> None:
        """Remove a dead incarnation's messages and the id records it still holds."""
        pk = self.messages_pk(tenant, thread_seq)
        while True:
            page = await self.table.query(pk, limit=100, forward=True)
            if not page:
                return
            await asyncio.gather(
                *(self._release_id(tenant, m["id"]["S"], thread_seq) for m in page)
            )
            await self.table.batch_delete([key(pk, m["sk"]["S"]) for m in page])

    async def _release_id(self, tenant: str, message_id: str, thread_seq: int) -> None:
        try:
            await self.table.client.delete_item(
                TableName=self.table.name,
                Key=key(self.id_pk(tenant, message_id)),
                ConditionExpression="#tseq = :tseq",
                ExpressionAttributeNames={"#tseq": "tseq"},
                ExpressionAttributeValues={":tseq": n(thread_seq)},
            )
        except Exception as exc:
            if error_code(exc) != "ConditionalCheckFailedException":
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
            for item in await self.table.batch_get([key(self.id_pk(tenant, i)) for i in first])
        }
        kept: dict[str, Item] = {}  # ids this incarnation already holds -> their message keys
        stale: dict[str, int] = {}  # ids held by a dead incarnation -> its seq
        for message_id, index in first.items():
            holder = holders.get(self.id_pk(tenant, message_id))
            if holder is None:
                continue
            holder_tseq = int(holder["tseq"]["N"])
            if holder_tseq == tseq:
                kept[message_id] = key(self.messages_pk(tenant, tseq), holder["sk2"]["S"])
                continue
            other = holder["thread"]["S"]
            if other != thread_id:
                alive = await self.table.get(key(self._thread_pk(tenant, other)))
                if alive is not None and int(alive["seq"]["N"]) == holder_tseq:
                    raise AlreadyExists(
                        f"messages[{index}].id {message_id!r} is already used in another thread"
                    )
            stale[message_id] = holder_tseq
        new = [i for i in first if i not in kept]
        stored: dict[str, Item] = {}
        if kept:
            for found in await self.table.batch_get(list(kept.values())):
                stored[found["id"]["S"]] = found
            if len(stored) < len(kept):
                raise _Retry()  # swept meanwhile: the thread was deleted, re-check it
        if new:
            await self._write_new(tenant, thread_id, thread, messages, first, new, stale, stored)
        return _messages(thread_id, [stored[i] for i in ids])

    async def _write_new(
        self,
        tenant: str,
        thread_id: str,
        thread: Item,
        messages: list[NewMessage],
        first: dict[str, int],
        new: list[str],
        stale: dict[str, int],
        stored: dict[str, Item],
    ) -> None:
        """One transaction: the new messages, their id claims and the thread's count."""
        tseq = int(thread["seq"]["N"])
        last = await self._next_seqs(tenant, len(new))
        now = now_us()
        pk = self.messages_pk(tenant, tseq)
        name = self.table.name
        writes: list[dict[str, Any]] = []
        for offset, message_id in enumerate(new):
            message = messages[first[message_id]]
            sk = seq_key(last - len(new) + 1 + offset)
            body = {
                "parts": [p.model_dump(mode="json") for p in message.parts],
                "metadata": message.metadata,
            }
            item: Item = {
                **key(pk, sk),
                "id": s(message_id),
                "role": s(message.role.value),
                "ct": n(now),
                "body": b(self._encode(body, f"messages[{first[message_id]}]")),
            }
            stored[message_id] = item
            claim: dict[str, Any] = {
                "TableName": name,
                "Item": {
                    **key(self.id_pk(tenant, message_id)),
                    "thread": s(thread_id),
                    "tseq": n(tseq),
                    "sk2": s(sk),
                },
            }
            if message_id in stale:
                claim["ConditionExpression"] = "#tseq = :old"
                claim["ExpressionAttributeNames"] = {"#tseq": "tseq"}
                claim["ExpressionAttributeValues"] = {":old": n(stale[message_id])}
            else:
                claim["ConditionExpression"] = "attribute_not_exists(#pk)"
                claim["ExpressionAttributeNames"] = {"#pk": "pk"}
            writes.append({"Put": claim})
            writes.append({"Put": {"TableName": name, "Item": item}})
        writes.append(
            {
                "Update": {
                    "TableName": name,
                    "Key": key(self._thread_pk(tenant, thread_id)),
                    "UpdateExpression": "ADD #mc :k SET #ut = :ut",
                    "ConditionExpression": "#seq = :tseq AND #mc = :mc",
                    "ExpressionAttributeNames": {
                        "#mc": "message_count",
                        "#ut": "ut",
                        "#seq": "seq",
                    },
                    "ExpressionAttributeValues": {
                        ":k": n(len(new)),
                        ":ut": n(now),
                        ":tseq": n(tseq),
                        ":mc": thread["message_count"],
                    },
                }
            }
        )
        if await self.table.transact(writes) is not None:
            raise _Retry()  # an id was claimed or the thread changed meanwhile

    async def _thread_messages(
        self, tenant: str, thread_id: str, query: Callable[[str], Awaitable[list[Item]]]
    ) -> list[Item]:
        """`query` run on the thread's message partition; NotFound without the thread.

        The partition is named by the thread's incarnation, read from the thread item. Once
        this process has read it, the thread and the partition are read together (one round
        trip's latency, not two); a thread deleted and created again meanwhile is queried
        again under its new incarnation."""
        known = self._incarnations.get((tenant, thread_id))
        if known is None:
            thread, items = await self._thread_item(tenant, thread_id), None
        else:
            thread, items = await asyncio.gather(
                self._thread_item(tenant, thread_id), query(self.messages_pk(tenant, known))
            )
        seq = int(thread["seq"]["N"])
        self._incarnations[(tenant, thread_id)] = seq
        self._incarnations.move_to_end((tenant, thread_id))
        if len(self._incarnations) > _KNOWN_INCARNATIONS:
            self._incarnations.popitem(last=False)
        if items is None or seq != known:
            items = await query(self.messages_pk(tenant, seq))
        return items

    async def last_messages(self, tenant: str, thread_id: str, n: int) -> list[Message]:
        if n <= 0:
            await self._thread_item(tenant, thread_id)
            return []
        items = await self._thread_messages(
            tenant, thread_id, lambda pk: self.table.query(pk, limit=n, forward=False)
        )
        return _messages(thread_id, items[::-1])

    async def list_messages(
        self, tenant: str, thread_id: str, *, limit: int, after_seq: int | None
    ) -> list[tuple[int, Message]]:
        if limit <= 0:
            await self._thread_item(tenant, thread_id)
            return []
        after = (">", seq_key(after_seq or 0))
        items = await self._thread_messages(
            tenant,
            thread_id,
            lambda pk: self.table.query(pk, limit=limit, forward=True, sk_cond=after),
        )
        seqs = [int(item["sk"]["S"]) for item in items]
        return list(zip(seqs, _messages(thread_id, items), strict=True))

    async def messages_around(
        self, tenant: str, anchors: list[tuple[str, str]], *, before: int, after: int
    ) -> dict[str, list[Message]]:
        wanted = {message_id: thread_id for thread_id, message_id in anchors}
        if not wanted:
            return {}
        claims = await self.table.batch_get([key(self.id_pk(tenant, m)) for m in wanted])
        by_id = {c["pk"]["S"]: c for c in claims}
        held = {}  # anchor -> its claim, when the claim names the anchor's thread
        for message_id, thread_id in wanted.items():
            claim = by_id.get(self.id_pk(tenant, message_id))
            if claim is not None and claim["thread"]["S"] == thread_id:
                held[message_id] = claim
        threads = await self.table.batch_get(
            [key(self._thread_pk(tenant, t)) for t in {c["thread"]["S"] for c in held.values()}]
        )
        alive = {t["id"]["S"]: int(t["seq"]["N"]) for t in threads}
        live = {m: c for m, c in held.items() if alive.get(c["thread"]["S"]) == int(c["tseq"]["N"])}

        async def window(message_id: str, claim: Item) -> tuple[str, list[Item]]:
            pk, at = self.messages_pk(tenant, int(claim["tseq"]["N"])), claim["sk2"]["S"]
            earlier, rest = await asyncio.gather(
                self.table.query(pk, limit=before, forward=False, sk_cond=("<", at)),
                self.table.query(pk, limit=after + 1, forward=True, sk_cond=(">=", at)),
            )
            if not rest or rest[0]["sk"]["S"] != at:
                return message_id, []  # swept meanwhile
            return message_id, [*reversed(earlier), *rest]

        if before == 0 and after == 0:  # the messages alone: one batch read
            items = await self.table.batch_get(
                [
                    key(self.messages_pk(tenant, int(c["tseq"]["N"])), c["sk2"]["S"])
                    for c in live.values()
                ]
            )
            found = [(item["id"]["S"], [item]) for item in items]
        else:
            found = list(await asyncio.gather(*(window(m, c) for m, c in live.items())))
        return {m: _messages(wanted[m], items) for m, items in found if items}

    # -- working memory: see loomwork.storage.dynamodb_working ---------------------------

    async def get_working_memory(
        self, tenant: str, scope: WorkingMemoryScope, owner: str
    ) -> StoredWorkingMemory | None:
        return await self.working.get(tenant, scope, owner)

    async def put_working_memory(
        self, tenant: str, scope: WorkingMemoryScope, owner: str, write: WorkingMemoryWrite
    ) -> StoredWorkingMemory:
        data = None if write.data is None else self._encode(write.data, "working_memory.data")
        return await self.working.put(tenant, scope, owner, write, data)

    async def ping(self) -> bool:
        try:
            await self.table.describe()
        except Exception:
            return False
        return True
