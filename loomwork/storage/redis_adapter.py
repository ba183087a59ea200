"""The Redis storage adapter: every write (and every multi-key read) is one Lua script.

Atomicity: each operation runs as a single server-side Lua script, so it is all or
nothing and sees one consistent snapshot — no WATCH/MULTI retry loops, one round
trip. An append first checks every message id for a clash with another thread and
only then writes, so a refused append stores nothing.

Layout, all keys of one tenant sharing the hash tag `{t:<len>:<tenant>}` (one cluster
slot; the length prefix keeps tenants containing ':' from colliding):

    <base>:seq            string  per-tenant monotonic counter (threads and messages)
    <base>:th:<thread>    hash    seq, resource_id, title, metadata (codec), message_count,
                                  create_time, update_time (µs since the epoch, UTC)
    <base>:tseq           zset    thread id scored by seq (all threads)
    <base>:rseq:<res>     zset    thread id scored by seq, per resource id
    <base>:ids            hash    message id -> thread id (ids are unique per tenant)
    <base>:m:<thread>     hash    message id -> codec record: the message's own JSON (id,
                                  thread_id, role, parts, metadata, create_time)
    <base>:ms:<thread>    zset    message id scored by seq
    <base>:wm:t:<thread>  hash    a thread's working memory: markdown, data (codec, empty
                                  for none), version, ut
    <base>:wm:r:<res>     hash    a resource's working memory, the same fields

Three scripts reach keys they derive (the thread's resource index on delete, the thread
hashes on listing, the threads of recall anchors) rather than receive in KEYS; they share
the tenant's hash tag, so this holds on Redis Cluster too. The client must not decode
responses (values are binary codec bytes). Durability is the server's persistence setting
(AOF with `appendfsync everysec` loses at most a second of writes), not the adapter's.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import redis.asyncio as aioredis

from loomwork.errors import AlreadyExists, NotFound
from loomwork.ids import new_id
from loomwork.messages import MESSAGE_LIST, Message, NewMessage, NewThread, Thread, ThreadUpdate
from loomwork.storage import codec
from loomwork.storage.adapter import (
    StoredWorkingMemory,
    WorkingMemoryScope,
    WorkingMemoryWrite,
    version_conflict,
)
from loomwork.storage.codec import DEFAULT_CODEC, StorageCodec

_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)

_CREATE = """
if redis.call('EXISTS', KEYS[1]) == 1 then return 0 end
local seq = redis.call('INCR', KEYS[4])
redis.call('HSET', KEYS[1], 'seq', seq, 'resource_id', ARGV[2], 'title', ARGV[3],
  'metadata', ARGV[4], 'message_count', 0, 'create_time', ARGV[5], 'update_time', ARGV[5])
redis.call('ZADD', KEYS[2], seq, ARGV[1])
redis.call('ZADD', KEYS[3], seq, ARGV[1])
return seq
"""

_UPDATE = """
if redis.call('EXISTS', KEYS[1]) == 0 then return false end
redis.call('HSET', KEYS[1], 'update_time', ARGV[1])
if ARGV[2] == '1' then redis.call('HSET', KEYS[1], 'title', ARGV[3]) end
if ARGV[4] == '1' then redis.call('HSET', KEYS[1], 'metadata', ARGV[5]) end
return redis.call('HGETALL', KEYS[1])
"""

# KEYS: th, tseq, ids, m, ms, wm; ARGV: thread id, rseq key prefix
_DELETE = """
if redis.call('EXISTS', KEYS[1]) == 0 then return 0 end
local resource = redis.call('HGET', KEYS[1], 'resource_id')
redis.call('ZREM', KEYS[2], ARGV[1])
redis.call('ZREM', ARGV[2] .. resource, ARGV[1])
local ids = redis.call('HKEYS', KEYS[4])
for i = 1, #ids, 500 do
  redis.call('HDEL', KEYS[3], unpack(ids, i, math.min(i + 499, #ids)))
end
redis.call('DEL', KEYS[1], KEYS[4], KEYS[5], KEYS[6])
return 1
"""

# KEYS: wm[, th when thread-scoped]. Nil when the thread is missing, else the flat hash.
_GET_WORKING = """
if #KEYS == 2 and redis.call('EXISTS', KEYS[2]) == 0 then return false end
return redis.call('HGETALL', KEYS[1])
"""

# KEYS: wm[, th]; ARGV: expected version ('' for any), markdown, data, now.
# Nil (no thread), {0, current version} (another version is stored) or {1, new version}.
_PUT_WORKING = """
if #KEYS == 2 and redis.call('EXISTS', KEYS[2]) == 0 then return false end
local version = tonumber(redis.call('HGET', KEYS[1], 'version') or '0')
if ARGV[1] ~= '' and tonumber(ARGV[1]) ~= version then return {0, version} end
redis.call('HSET', KEYS[1], 'markdown', ARGV[2], 'data', ARGV[3], 'version', version + 1,
  'ut', ARGV[4])
return {1, version + 1}
"""

# KEYS: ids; ARGV: before, after, m key prefix, ms key prefix, then (thread, message id)
# pairs. Returns message id, {records oldest first}, ... for anchors still in their thread.
_AROUND = """
local before, after = tonumber(ARGV[1]), tonumber(ARGV[2])
local out = {}
for i = 5, #ARGV, 2 do
  local thread, id = ARGV[i], ARGV[i + 1]
  if redis.call('HGET', KEYS[1], id) == thread then
    local index = ARGV[4] .. thread
    local rank = redis.call('ZRANK', index, id)
    if rank then
      local ids = redis.call('ZRANGE', index, math.max(0, rank - before), rank + after)
      out[#out + 1] = id
      out[#out + 1] = redis.call('HMGET', ARGV[3] .. thread, unpack(ids))
    end
  end
end
return out
"""

# KEYS: th, ids, m, ms, seq; ARGV: thread id, now, then (message id, record) pairs.
# Returns nil (no thread), an integer (index of a message whose id another thread
# holds; nothing written) or the stored records in order.
_APPEND = """
if redis.call('EXISTS', KEYS[1]) == 0 then return false end
local n = (#ARGV - 2) / 2
for i = 0, n - 1 do
  local owner = redis.call('HGET', KEYS[2], ARGV[3 + 2 * i])
  if owner and owner ~= ARGV[1] then return i end
end
local out = {}
local inserted = 0
for i = 0, n - 1 do
  local id, record = ARGV[3 + 2 * i], ARGV[4 + 2 * i]
  if redis.call('HSETNX', KEYS[2], id, ARGV[1]) == 1 then
    local seq = redis.call('INCR', KEYS[5])
    redis.call('HSET', KEYS[3], id, record)
    redis.call('ZADD', KEYS[4], seq, id)
    inserted = inserted + 1
    out[#out + 1] = record
  else
    out[#out + 1] = redis.call('HGET', KEYS[3], id)
  end
end
if inserted > 0 then
  redis.call('HINCRBY', KEYS[1], 'message_count', inserted)
  redis.call('HSET', KEYS[1], 'update_time', ARGV[2])
end
return out
"""

# KEYS: th, ms, m; ARGV: n. Newest first.
_LAST = """
if redis.call('EXISTS', KEYS[1]) == 0 then return false end
local n = tonumber(ARGV[1])
if n <= 0 then return {} end
local ids = redis.call('ZREVRANGE', KEYS[2], 0, n - 1)
if #ids == 0 then return {} end
return redis.call('HMGET', KEYS[3], unpack(ids))
"""

# KEYS: th, ms, m; ARGV: after, limit. Returns seq, record, seq, record, ...
_LIST_MESSAGES = """
if redis.call('EXISTS', KEYS[1]) == 0 then return false end
local limit = tonumber(ARGV[2])
if limit <= 0 then return {} end
local rows = redis.call('ZRANGEBYSCORE', KEYS[2], '(' .. ARGV[1], '+inf',
  'WITHSCORES', 'LIMIT', 0, limit)
if #rows == 0 then return {} end
local ids = {}
for i = 1, #rows, 2 do ids[#ids + 1] = rows[i] end
local records = redis.call('HMGET', KEYS[3], unpack(ids))
local out = {}
for i = 1, #ids do
  out[2 * i - 1] = rows[2 * i]
  out[2 * i] = records[i]
end
return out
"""

# KEYS: the seq zset to walk; ARGV: max score, limit, thread hash key prefix.
# Returns the flat HGETALL of each thread, newest first, preceded by its id.
_LIST_THREADS = """
local limit = tonumber(ARGV[2])
if limit <= 0 then return {} end
local ids = redis.call('ZREVRANGEBYSCORE', KEYS[1], ARGV[1], '-inf', 'LIMIT', 0, limit)
local out = {}
for i = 1, #ids do
  local fields = redis.call('HGETALL', ARGV[3] .. ids[i])
  if #fields > 0 then out[#out + 1] = ids[i]; out[#out + 1] = fields end
end
return out
"""


def _now_us() -> int:
    return (datetime.now(UTC) - _EPOCH) // timedelta(microseconds=1)


def _time(us: int | bytes) -> datetime:
    return _EPOCH + timedelta(microseconds=int(us))


def _thread(thread_id: str, flat: list[bytes]) -> tuple[int, Thread]:
    fields = {flat[i].decode(): flat[i + 1] for i in range(0, len(flat), 2)}
    thread = Thread(
        id=thread_id,
        resource_id=fields["resource_id"].decode(),
        title=fields["title"].decode(),
        metadata=codec.decode(fields["metadata"]),
        message_count=int(fields["message_count"]),
        create_time=_time(fields["create_time"]),
        update_time=_time(fields["update_time"]),
    )
    return int(fields["seq"]), thread


def _messages(records: list[bytes]) -> list[Message]:
    """Stored records (each a message's JSON) as models, in one validation."""
    return MESSAGE_LIST.validate_json(codec.json_array(records))


class RedisMemoryStorage:
    """`MemoryStorage` on Redis (or Valkey); every operation is one atomic Lua script."""

    def __init__(
        self,
        redis: aioredis.Redis,
        *,
        prefix: str = "loomwork",
        codec: StorageCodec = DEFAULT_CODEC,
    ) -> None:
        if redis.connection_pool.connection_kwargs.get("decode_responses"):
            raise ValueError("RedisMemoryStorage needs a client with decode_responses=False")
        self.redis = redis
        self.prefix = prefix
        self.codec = codec
        self._create = redis.register_script(_CREATE)
        self._update = redis.register_script(_UPDATE)
        self._delete = redis.register_script(_DELETE)
        self._append = redis.register_script(_APPEND)
        self._last = redis.register_script(_LAST)
        self._list_messages = redis.register_script(_LIST_MESSAGES)
        self._list_threads = redis.register_script(_LIST_THREADS)
        self._get_working = redis.register_script(_GET_WORKING)
        self._put_working = redis.register_script(_PUT_WORKING)
        self._around = redis.register_script(_AROUND)

    def _base(self, tenant: str) -> str:
        return f"{self.prefix}:{{t:{len(tenant)}:{tenant}}}"

    def _working_key(self, tenant: str, scope: WorkingMemoryScope, owner: str) -> str:
        return f"{self._base(tenant)}:wm:{scope[0]}:{owner}"

    def thread_keys(self, tenant: str, thread_id: str) -> tuple[str, str, str]:
        """The thread hash, its message records and its message seq index."""
        base = self._base(tenant)
        return f"{base}:th:{thread_id}", f"{base}:m:{thread_id}", f"{base}:ms:{thread_id}"

    async def create_thread(self, tenant: str, thread: NewThread) -> Thread:
        base = self._base(tenant)
        th, _, _ = self.thread_keys(tenant, thread.id)
        now = _now_us()
        seq = await self._create(
            keys=[th, f"{base}:tseq", f"{base}:rseq:{thread.resource_id}", f"{base}:seq"],
            args=[
                thread.id,
                thread.resource_id,
                thread.title,
                self.codec.encode(thread.metadata),
                now,
            ],
        )
        if not seq:
            raise AlreadyExists(f"thread {thread.id!r} already exists")
        return Thread(
            id=thread.id,
            resource_id=thread.resource_id,
            title=thread.title,
            metadata=thread.metadata,
            message_count=0,
            create_time=_time(now),
            update_time=_time(now),
        )

    async def get_thread(self, tenant: str, thread_id: str) -> Thread:
        th, _, _ = self.thread_keys(tenant, thread_id)
        flat = await self.redis.execute_command("HGETALL", th)
        if not flat:
            raise NotFound(f"thread {thread_id!r} not found")
        if isinstance(flat, dict):  # RESP3 clients answer a map
            flat = [x for pair in flat.items() for x in pair]
        return _thread(thread_id, flat)[1]

    async def list_threads(
        self, tenant: str, *, resource_id: str | None, limit: int, before_seq: int | None
    ) -> list[tuple[int, Thread]]:
        base = self._base(tenant)
        index = f"{base}:tseq" if resource_id is None else f"{base}:rseq:{resource_id}"
        top = "+inf" if before_seq is None else f"({before_seq}"
        flat = await self._list_threads(keys=[index], args=[top, limit, f"{base}:th:"])
        return [_thread(flat[i].decode(), flat[i + 1]) for i in range(0, len(flat), 2)]

    async def update_thread(self, tenant: str, thread_id: str, update: ThreadUpdate) -> Thread:
        th, _, _ = self.thread_keys(tenant, thread_id)
        flat = await self._update(
            keys=[th],
            args=[
                _now_us(),
                "1" if update.title is not None else "0",
                update.title or "",
                "1" if update.metadata is not None else "0",
                self.codec.encode(update.metadata) if update.metadata is not None else b"",
            ],
        )
        if flat is None:
            raise NotFound(f"thread {thread_id!r} not found")
        return _thread(thread_id, flat)[1]

    async def delete_thread(self, tenant: str, thread_id: str) -> None:
        base = self._base(tenant)
        th, m, ms = self.thread_keys(tenant, thread_id)
        deleted = await self._delete(
            keys=[
                th,
                f"{base}:tseq",
                f"{base}:ids",
                m,
                ms,
                self._working_key(tenant, "thread", thread_id),
            ],
            args=[thread_id, f"{base}:rseq:"],
        )
        if not deleted:
            raise NotFound(f"thread {thread_id!r} not found")

    async def append_messages(
        self, tenant: str, thread_id: str, messages: list[NewMessage]
    ) -> list[Message]:
        base = self._base(tenant)
        th, m, ms = self.thread_keys(tenant, thread_id)
        now = _now_us()
        created = _time(now).isoformat()
        ids: list[str] = []
        args: list[Any] = [thread_id, now]
        for message in messages:
            message_id = message.id or new_id("msg")
            ids.append(message_id)
            record = self.codec.encode(
                {
                    "id": message_id,
                    "thread_id": thread_id,
                    "role": message.role.value,
                    "parts": [p.model_dump(mode="json") for p in message.parts],
                    "metadata": message.metadata,
                    "create_time": created,
                }
            )
            args += [message_id, record]
        result = await self._append(keys=[th, f"{base}:ids", m, ms, f"{base}:seq"], args=args)
        if result is None:
            raise NotFound(f"thread {thread_id!r} not found")
        if isinstance(result, int):
            raise AlreadyExists(
                f"messages[{result}].id {ids[result]!r} is already used in another thread"
            )
        return _messages(result)

    async def last_messages(self, tenant: str, thread_id: str, n: int) -> list[Message]:
        th, m, ms = self.thread_keys(tenant, thread_id)
        records = await self._last(keys=[th, ms, m], args=[n])
        if records is None:
            raise NotFound(f"thread {thread_id!r} not found")
        return _messages(records[::-1])

    async def list_messages(
        self, tenant: str, thread_id: str, *, limit: int, after_seq: int | None
    ) -> list[tuple[int, Message]]:
        th, m, ms = self.thread_keys(tenant, thread_id)
        flat = await self._list_messages(keys=[th, ms, m], args=[after_seq or 0, limit])
        if flat is None:
            raise NotFound(f"thread {thread_id!r} not found")
        seqs = [int(float(seq)) for seq in flat[::2]]
        return list(zip(seqs, _messages(flat[1::2]), strict=True))

    async def messages_around(
        self, tenant: str, anchors: list[tuple[str, str]], *, before: int, after: int
    ) -> dict[str, list[Message]]:
        if not anchors:
            return {}
        base = self._base(tenant)
        args: list[Any] = [before, after, f"{base}:m:", f"{base}:ms:"]
        for thread_id, message_id in anchors:
            args += [thread_id, message_id]
        flat = await self._around(keys=[f"{base}:ids"], args=args)
        windows = [[r for r in records if r is not None] for records in flat[1::2]]
        decoded = iter(_messages([r for window in windows for r in window]))
        return {
            anchor.decode(): [next(decoded) for _ in window]
            for anchor, window in zip(flat[::2], windows, strict=True)
        }

    def _working_keys(self, tenant: str, scope: WorkingMemoryScope, owner: str) -> list[str]:
        keys = [self._working_key(tenant, scope, owner)]
        if scope == "thread":
            keys.append(self.thread_keys(tenant, owner)[0])
        return keys

    async def get_working_memory(
        self, tenant: str, scope: WorkingMemoryScope, owner: str
    ) -> StoredWorkingMemory | None:
        flat = await self._get_working(keys=self._working_keys(tenant, scope, owner))
        if flat is None:
            raise NotFound(f"thread {owner!r} not found")
        if not flat:
            return None
        fields = {flat[i].decode(): flat[i + 1] for i in range(0, len(flat), 2)}
        return StoredWorkingMemory(
            markdown=fields["markdown"].decode(),
            data=codec.decode(fields["data"]) if fields["data"] else None,
            version=int(fields["version"]),
            update_time=_time(fields["ut"]),
        )

    async def put_working_memory(
        self, tenant: str, scope: WorkingMemoryScope, owner: str, write: WorkingMemoryWrite
    ) -> StoredWorkingMemory:
        now = _now_us()
        answer = await self._put_working(
            keys=self._working_keys(tenant, scope, owner),
            args=[
                "" if write.expected_version is None else write.expected_version,
                write.markdown,
                b"" if write.data is None else self.codec.encode(write.data),
                now,
            ],
        )
        if answer is None:
            raise NotFound(f"thread {owner!r} not found")
        written, version = answer
        if not written:
            assert write.expected_version is not None
            raise version_conflict(scope, owner, write.expected_version, int(version))
        return StoredWorkingMemory(
            markdown=write.markdown, data=write.data, version=int(version), update_time=_time(now)
        )

    async def ping(self) -> bool:
        try:
            return bool(await self.redis.ping())
        except Exception:
            return False
