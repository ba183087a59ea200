"""A run's first step begun on a chosen worker while a server starts the run (split
deployments: `loomwork server` beside `loomwork worker`s).

In one process (`loomwork up`) the service's own worker takes its runs' first tasks (eager
start): it begins a run's first step at once and the run's first activity adopts it
(loomwork.agents.speculation). A server without a worker cannot: before the model is asked,
Temporal starts the run, gives its first workflow task to some worker, and that task
schedules the activity — some 15–20 ms on an idle 2-core machine.

So a server chooses a live worker and tells it, over Redis, to begin the step (`begin`);
the run's input names that worker's own task queue for its first activity
(`AgentRunRequest.first_step_queue`), so the activity comes to the process that began the
step, which adopts it as in one process. The step is fenced as there: it writes and drafts
only once the server says Temporal created the run (`confirm`), and is cancelled if the
server says it did not (`abandon`) or no activity adopts it in time. A worker that is gone
misses nothing that matters: a notice nobody hears is not sent on (the run's first activity
goes to the shared task queue), and a first activity its chosen worker does not take in
time goes there too (workflows/agent_run.py).

Workers list themselves in a sorted set (score: when the entry lapses) while they take
first steps; notices go by pub/sub, one channel per worker. The notices a server sends at
one moment (runs started together) go to Redis in one pipeline: two per run otherwise cost
two round trips each on the start path, beside the accept of the other calls.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable
from typing import Literal

from pydantic import BaseModel, Field
from redis.asyncio import Redis
from redis.exceptions import RedisError

from loomwork.agents.run_models import AgentRunRequest

log = logging.getLogger(__name__)

LISTED_FOR = 3.0  # seconds a worker's entry lasts unless it is renewed (every third of it)


class FirstStepNotice(BaseModel):
    """What a server tells the worker it chose: begin the step of `request`, or confirm or
    abandon the step of the run whose event log is `key`."""

    op: Literal["begin", "confirm", "abandon"]
    key: str
    request: AgentRunRequest | None = None  # with `begin`: the run's input, as started
    # With `begin`: the trace of the call that starts the run (W3C headers), which the
    # step's model call belongs to (it begins before the run's activity exists).
    trace: dict[str, str] = Field(default_factory=dict)


class FirstStepWorkers:
    """The workers of one task queue that take first steps, and the notices sent to them."""

    def __init__(self, redis: Redis, task_queue: str, *, listed_for: float = LISTED_FOR):
        self.redis = redis
        self.listed_for = listed_for
        self.registry = f"loomwork:first-step-workers:{task_queue}"
        self._known: list[str] = []
        self._known_until = 0.0
        self._turn = 0
        # Notices to send with the next pipeline: channel, message, and who waits to hear
        # how many workers heard it.
        self._outbox: list[tuple[str, str, asyncio.Future[int]]] = []
        self._sending: set[asyncio.Task[None]] = set()

    @staticmethod
    def channel(queue: str) -> str:
        return f"loomwork:first-steps:{queue}"

    async def choose(self) -> str | None:
        """A listed worker's first-step queue, in turn (the list read at most twice a
        second); None when none is listed or Redis does not answer."""
        now = time.time()
        if now >= self._known_until:
            try:
                found = await self.redis.zrangebyscore(self.registry, now, "+inf")
            except RedisError as error:
                log.warning("first-step workers unknown (Redis: %s): none chosen", error)
                found = []
            self._known = sorted(q.decode() if isinstance(q, bytes) else str(q) for q in found)
            self._known_until = now + 0.5
        if not self._known:
            return None
        self._turn += 1
        return self._known[self._turn % len(self._known)]

    async def tell(self, queue: str, notice: FirstStepNotice) -> bool:
        """Send `notice` to the worker of `queue`; False when no worker heard it (gone, or
        Redis did not answer): that worker is not chosen again until it is listed anew.
        Sent with the other notices told before the loop's next turn, in one pipeline."""
        loop = asyncio.get_running_loop()
        heard_by = loop.create_future()
        self._outbox.append((self.channel(queue), notice.model_dump_json(), heard_by))
        if len(self._outbox) == 1:
            loop.call_soon(self._send_outbox)
        heard = await heard_by
        if not heard and queue in self._known:
            self._known.remove(queue)
        return heard > 0

    def _send_outbox(self) -> None:
        batch, self._outbox = self._outbox, []
        task = asyncio.get_running_loop().create_task(self._publish(batch))
        self._sending.add(task)
        task.add_done_callback(self._sending.discard)

    async def _publish(self, batch: list[tuple[str, str, asyncio.Future[int]]]) -> None:
        replies: list[object] = []
        try:
            async with self.redis.pipeline(transaction=False) as pipe:
                for channel, message, _ in batch:
                    pipe.publish(channel, message)
                replies = await pipe.execute(raise_on_error=False)
        except RedisError as error:
            replies = [error] * len(batch)
        finally:  # cancelled too: nobody waits for ever
            for i, (channel, _, heard_by) in enumerate(batch):
                reply = replies[i] if i < len(replies) else 0
                if isinstance(reply, Exception):
                    log.warning("could not tell first-step worker %s (Redis: %s)", channel, reply)
                    reply = 0
                if not heard_by.done():  # its teller may have been cancelled meanwhile
                    heard_by.set_result(int(reply))  # type: ignore[call-overload]

    async def serve(
        self, queue: str, redis: Redis, on_notice: Callable[[FirstStepNotice], None]
    ) -> None:
        """Hear the notices for `queue` and keep the worker listed while it hears them; until
        cancelled. `redis`: a client for the subscription alone, with no socket timeout (it
        waits for messages). Redis lost: the entry lapses and servers stop choosing this
        worker, until Redis is back."""
        while True:
            pubsub = redis.pubsub(ignore_subscribe_messages=True)
            listing: asyncio.Task[None] | None = None
            try:
                await pubsub.subscribe(self.channel(queue))
                listing = asyncio.create_task(self._keep_listed(queue))
                async for message in pubsub.listen():
                    if message.get("type") == "message":
                        self._hear(message["data"], on_notice)
            except RedisError as error:
                log.warning("first-step notices for %s lost (Redis: %s)", queue, error)
            finally:
                if listing is not None:
                    listing.cancel()
                    with contextlib.suppress(asyncio.CancelledError):
                        await listing
                with contextlib.suppress(RedisError):
                    await self.redis.zrem(self.registry, queue)
                with contextlib.suppress(RedisError):
                    await pubsub.aclose()
            await asyncio.sleep(1.0)  # Redis lost: listen again

    @staticmethod
    def _hear(data: bytes, on_notice: Callable[[FirstStepNotice], None]) -> None:
        try:
            on_notice(FirstStepNotice.model_validate_json(data))
        except Exception:  # one bad notice must not stop the others
            log.exception("a first-step notice could not be followed")

    async def _keep_listed(self, queue: str) -> None:
        while True:
            try:
                await self.redis.zadd(self.registry, {queue: time.time() + self.listed_for})
                # Lapsed entries of other workers go as well: the set stays small.
                await self.redis.zremrangebyscore(self.registry, "-inf", time.time())
            except RedisError as error:
                log.warning("could not list first-step worker %s (Redis: %s)", queue, error)
            await asyncio.sleep(self.listed_for / 3)
