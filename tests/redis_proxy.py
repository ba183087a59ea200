"""A TCP proxy in front of the session's real Redis that a test can break: drop the reply
to the next command (Redis ran it; the client never hears back), or go down (every
connection cut, none accepted) and come back on the same port."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager


class RedisProxy:
    """Forwards 127.0.0.1:`port` to the Redis at `target_port`."""

    def __init__(self, target_port: int) -> None:
        self.target_port = target_port
        self.port = 0
        self.replies_dropped = 0
        self._drop_next_reply = False
        self._server: asyncio.Server | None = None
        self._pipes: set[asyncio.Task[None]] = set()

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    async def up(self) -> None:
        """Accept connections (on the port of before, once it had one)."""
        self._server = await asyncio.start_server(
            self._connected, "127.0.0.1", self.port, reuse_address=True
        )
        self.port = self._server.sockets[0].getsockname()[1]

    async def down(self) -> None:
        """Cut every connection and refuse new ones, as a Redis that died."""
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()
            self._server = None
        for pipe in list(self._pipes):
            pipe.cancel()
        await asyncio.gather(*self._pipes, return_exceptions=True)

    def drop_next_reply(self) -> None:
        """The next reply Redis sends is thrown away and its connection cut."""
        self._drop_next_reply = True

    async def _connected(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._pipes.add(task)
        try:
            up_reader, up_writer = await asyncio.open_connection("127.0.0.1", self.target_port)
        except OSError:
            writer.close()
            self._pipes.discard(task)
            return
        pipes = {
            asyncio.ensure_future(self._pipe(reader, up_writer, replies=False)),
            asyncio.ensure_future(self._pipe(up_reader, writer, replies=True)),
        }
        try:
            await asyncio.wait(pipes, return_when=asyncio.FIRST_COMPLETED)
        except asyncio.CancelledError:
            pass
        finally:
            for pipe in pipes:
                pipe.cancel()
            await asyncio.gather(*pipes, return_exceptions=True)
            for w in (writer, up_writer):
                w.close()
            self._pipes.discard(task)

    async def _pipe(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, *, replies: bool
    ) -> None:
        while data := await reader.read(65536):
            if replies and self._drop_next_reply:
                self._drop_next_reply = False
                self.replies_dropped += 1
                raise ConnectionError("reply dropped")
            writer.write(data)
            await writer.drain()
        raise ConnectionError("closed")


@asynccontextmanager
async def redis_proxy(redis_url: str) -> AsyncIterator[RedisProxy]:
    """A RedisProxy to the Redis at `redis_url`, up; taken down on exit."""
    proxy = RedisProxy(int(redis_url.rsplit(":", 1)[1].split("/")[0]))
    await proxy.up()
    try:
        yield proxy
    finally:
        with contextlib.suppress(Exception):
            await proxy.down()
