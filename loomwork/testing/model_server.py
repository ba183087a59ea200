"""A scripted OpenAI-compatible HTTP server: the one model seam of the tests (and, in demo
mode, of the offline model).

It speaks the parts of the OpenAI HTTP API that Loomwork uses -- Chat Completions
(JSON and SSE streaming, tool calls, structured output), embeddings and the model
list -- so the real `openai` client talks to it exactly as it would to OpenAI.

What it answers is scripted (`loomwork.testing.script`), in the spirit of pydantic-ai's
`FunctionModel`:

- a queue of turns, answered in order (`ScriptedModelServer(script=[...])` or
  `server.push(...)`), or
- a function `(ChatRequest) -> Turn | Failure | Delay | str` (sync or async) that
  decides each answer from what the model was sent (messages, tools, response_format).

With no script, it echoes the last user message. Every chat request is recorded in
`server.requests` so tests assert what the model was sent.

    async with ScriptedModelServer([Turn(text="hi")]) as server:
        client = AsyncOpenAI(base_url=server.base_url, api_key="x")

From sync code: `base_url = server.start_in_thread()` ... `server.stop_in_thread()`,
or `with ScriptedModelServer(...) as server:`. In thread mode the script function
runs on the server's own thread and event loop.
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import logging
import socket
import threading
import time
from collections import deque
from collections.abc import Iterable, Iterator
from typing import Any

import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route

from loomwork.testing import openai_responses
from loomwork.testing.openai_responses import StreamAborted, error_response
from loomwork.testing.pseudo_embeddings import DEFAULT_EMBEDDING_DIMENSION
from loomwork.testing.script import (
    ChatRequest,
    Delay,
    EmbeddingRequest,
    Failure,
    ScriptFunction,
    ScriptItem,
    Turn,
    echo,
)

DEFAULT_MODEL = "scripted"


class _HideScriptedAborts(logging.Filter):
    """Drops uvicorn's traceback for a stream this server broke on purpose."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not (record.exc_info and isinstance(record.exc_info[1], StreamAborted))


_ABORT_FILTER = _HideScriptedAborts()


class _QuietServer(uvicorn.Server):
    """A uvicorn server that never touches the process's signal handlers."""

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        yield


class ScriptedModelServer:
    """An OpenAI-compatible server on 127.0.0.1 answering from a script."""

    def __init__(
        self,
        script: Iterable[ScriptItem] | ScriptFunction | None = None,
        *,
        model: str = DEFAULT_MODEL,
        embedding_dimension: int = DEFAULT_EMBEDDING_DIMENSION,
        host: str = "127.0.0.1",
        port: int = 0,
    ) -> None:
        self.model = model
        self.embedding_dimension = embedding_dimension
        self.host = host
        self.port = port
        self.requests: list[ChatRequest] = []
        self.embedding_requests: list[EmbeddingRequest] = []
        self._queue: deque[ScriptItem] = deque()
        self._function: ScriptFunction | None = None
        self.set_script(script)
        self._server: _QuietServer | None = None
        self._serve_task: asyncio.Task[None] | None = None
        self._thread: threading.Thread | None = None
        self._thread_loop: asyncio.AbstractEventLoop | None = None
        self._socket: socket.socket | None = None
        self.base_url = ""
        self.app = Starlette(
            routes=[
                Route("/v1/chat/completions", self._chat, methods=["POST"]),
                Route("/v1/embeddings", self._embeddings, methods=["POST"]),
                Route("/v1/models", self._models, methods=["GET"]),
            ]
        )

    # ---- scripting

    def set_script(self, script: Iterable[ScriptItem] | ScriptFunction | None) -> None:
        """Replace the script: a list of turns (a queue), a function, or None for echo."""
        self._queue.clear()
        self._function = None
        if script is None:
            self._function = echo
        elif callable(script):
            self._function = script
        else:
            self._queue.extend(script)

    def push(self, *items: ScriptItem) -> None:
        """Append turns to the queue (switching from a function script to a queue)."""
        self._function = None
        self._queue.extend(items)

    @property
    def pending(self) -> int:
        """Queued turns not answered yet."""
        return len(self._queue)

    async def _next_item(self, request: ChatRequest) -> ScriptItem:
        if self._function is not None:
            item = self._function(request)
            if inspect.isawaitable(item):
                item = await item
            return item
        if not self._queue:
            return Failure(
                500,
                f"scripted model server: script exhausted (request #{request.index} had no turn)",
            )
        return self._queue.popleft()

    # ---- lifecycle

    def _bind(self) -> socket.socket:
        # IPPROTO_TCP named explicitly: asyncio sets TCP_NODELAY only on sockets whose
        # proto says TCP, and without it each streamed chunk waits ~40 ms on Nagle.
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_TCP)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((self.host, self.port))
        sock.listen(128)
        sock.setblocking(False)
        self.port = int(sock.getsockname()[1])
        self.base_url = f"http://{self.host}:{self.port}/v1"
        return sock

    def _make_server(self) -> _QuietServer:
        logger = logging.getLogger("uvicorn.error")
        if _ABORT_FILTER not in logger.filters:
            logger.addFilter(_ABORT_FILTER)
        config = uvicorn.Config(
            self.app,
            log_level="warning",
            access_log=False,
            lifespan="off",
            timeout_graceful_shutdown=1,
        )
        return _QuietServer(config)

    async def start(self) -> str:
        """Start serving on the running event loop; returns the base URL (`.../v1`)."""
        if self._server is not None or self._thread is not None:
            raise RuntimeError("server already started")
        self._socket = self._bind()
        self._server = self._make_server()
        self._serve_task = asyncio.create_task(self._server.serve(sockets=[self._socket]))
        while not self._server.started:
            if self._serve_task.done():
                self._serve_task.result()
                raise RuntimeError("scripted model server stopped while starting")
            await asyncio.sleep(0.005)
        return self.base_url

    async def stop(self) -> None:
        """Stop serving (open connections are closed)."""
        server, task = self._server, self._serve_task
        self._server, self._serve_task = None, None
        if server is None or task is None:
            return
        server.should_exit = True
        server.force_exit = True
        try:
            await asyncio.wait_for(task, 5)
        except (TimeoutError, asyncio.CancelledError):
            task.cancel()
        finally:
            self._close_socket()

    def start_in_thread(self) -> str:
        """Start serving on a background thread with its own event loop; returns the base URL."""
        if self._server is not None or self._thread is not None:
            raise RuntimeError("server already started")
        self._socket = self._bind()
        server = self._make_server()
        failure: list[BaseException] = []
        sockets = [self._socket]

        def run() -> None:
            loop = asyncio.new_event_loop()
            self._thread_loop = loop
            try:
                loop.run_until_complete(server.serve(sockets=sockets))
            except BaseException as exc:
                failure.append(exc)
            finally:
                loop.close()

        self._server = server
        self._thread = thread = threading.Thread(
            target=run, name="scripted-model-server", daemon=True
        )
        thread.start()
        deadline = time.monotonic() + 10
        while not server.started and thread.is_alive() and time.monotonic() < deadline:
            time.sleep(0.005)
        if failure or not server.started:
            self.stop_in_thread()
            raise RuntimeError(f"scripted model server failed to start: {failure!r}")
        return self.base_url

    def stop_in_thread(self) -> None:
        """Stop a server started with `start_in_thread`."""
        server, thread, loop = self._server, self._thread, self._thread_loop
        self._server, self._thread, self._thread_loop = None, None, None
        if server is not None:
            server.should_exit = True
            server.force_exit = True
        if thread is not None:
            if loop is not None and not loop.is_closed():
                with contextlib.suppress(RuntimeError):
                    loop.call_soon_threadsafe(lambda: None)  # wake the loop up
            thread.join(5)
        self._close_socket()

    def _close_socket(self) -> None:
        if self._socket is not None:
            with contextlib.suppress(OSError):
                self._socket.close()
            self._socket = None

    async def __aenter__(self) -> ScriptedModelServer:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    def __enter__(self) -> ScriptedModelServer:
        self.start_in_thread()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop_in_thread()

    # ---- endpoints

    async def _models(self, request: Request) -> Response:
        return JSONResponse(
            {
                "object": "list",
                "data": [
                    {"id": self.model, "object": "model", "created": 0, "owned_by": "loomwork"},
                    {
                        "id": "scripted-embedding",
                        "object": "model",
                        "created": 0,
                        "owned_by": "loomwork",
                    },
                ],
            }
        )

    async def _read_json(self, request: Request) -> dict[str, Any] | None:
        try:
            body = await request.json()
        except (ValueError, UnicodeDecodeError):
            return None
        return body if isinstance(body, dict) else None

    async def _embeddings(self, request: Request) -> Response:
        body = await self._read_json(request)
        if body is None:
            return error_response(Failure(400, "request body must be a JSON object"))
        self.embedding_requests.append(EmbeddingRequest(body, dict(request.headers)))
        answer = openai_responses.embeddings(body, self.embedding_dimension)
        if isinstance(answer, Failure):
            return error_response(answer)
        return JSONResponse(answer)

    async def _chat(self, request: Request) -> Response:
        body = await self._read_json(request)
        if body is None:
            return error_response(Failure(400, "request body must be a JSON object"))
        chat = ChatRequest(index=len(self.requests), body=body, headers=dict(request.headers))
        self.requests.append(chat)
        if not isinstance(body.get("messages"), list) or not body["messages"]:
            return error_response(Failure(400, "'messages' must be a non-empty array"))
        try:
            item: ScriptItem | None = await self._next_item(chat)
        except Exception as exc:
            return error_response(Failure(500, f"scripted model server: script raised {exc!r}"))
        while isinstance(item, Delay):
            if not await self._sleep_watching(request, item.seconds):
                chat.disconnected = True
                return Response(status_code=499)
            item = item.then if item.then is not None else echo(chat)
        if isinstance(item, str):
            item = Turn(text=item)
        if isinstance(item, Failure):
            chat.completed = True
            return error_response(item)
        assert isinstance(item, Turn)
        if chat.stream:
            return StreamingResponse(
                openai_responses.completion_chunks(chat, item, self.model),
                media_type="text/event-stream",
                headers={"cache-control": "no-cache"},
            )
        chat.completed = True
        return JSONResponse(openai_responses.completion(chat, item, self.model))

    async def _sleep_watching(self, request: Request, seconds: float) -> bool:
        """Sleep; False as soon as the client disconnects."""
        deadline = time.monotonic() + seconds
        while True:
            if await request.is_disconnected():
                return False
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return True
            await asyncio.sleep(min(0.02, remaining))
