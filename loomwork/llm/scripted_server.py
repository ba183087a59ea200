"""A scripted OpenAI-compatible HTTP server: the offline model of the demo and of every test.

It speaks the parts of the OpenAI HTTP API that Loomwork uses -- Chat Completions
(JSON and SSE streaming, tool calls, structured output), embeddings and the model
list -- so the real `openai` client talks to it exactly as it would to OpenAI.

What it answers is scripted, in the spirit of pydantic-ai's `FunctionModel`:

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
import base64
import contextlib
import functools
import hashlib
import inspect
import json
import logging
import math
import random
import re
import socket
import struct
import threading
import time
import uuid
from collections import deque
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route

__all__ = [
    "ChatRequest",
    "Delay",
    "EmbeddingRequest",
    "Failure",
    "ScriptItem",
    "ScriptedModelServer",
    "ScriptedToolCall",
    "Turn",
    "Usage",
    "echo",
    "pseudo_embedding",
]

DEFAULT_MODEL = "scripted"
DEFAULT_EMBEDDING_DIMENSION = 384


# --------------------------------------------------------------------------- script


@dataclass(frozen=True)
class ScriptedToolCall:
    """One tool call the model makes; `arguments` is a dict or raw JSON text (may be invalid)."""

    name: str
    arguments: dict[str, Any] | str = field(default_factory=dict)
    id: str | None = None

    def arguments_json(self) -> str:
        if isinstance(self.arguments, str):
            return self.arguments
        return json.dumps(self.arguments, separators=(",", ":"))


@dataclass(frozen=True)
class Usage:
    prompt_tokens: int
    completion_tokens: int

    def as_dict(self) -> dict[str, int]:
        return {
            "prompt_tokens": self.prompt_tokens,
            "completion_tokens": self.completion_tokens,
            "total_tokens": self.prompt_tokens + self.completion_tokens,
        }


@dataclass(frozen=True)
class Turn:
    """One answer of the model: text and/or tool calls.

    Text is streamed in pieces of `chunk_size` characters, tool-call arguments too
    (OpenAI sends each call's id and name first, then its arguments in pieces).
    `chunk_delay` sleeps between streamed chunks; `abort_after_chunks` drops the
    connection after that many chunks (a stream broken mid-way).
    `usage` defaults to a rough word count.
    """

    text: str = ""
    tool_calls: Sequence[ScriptedToolCall] = ()
    usage: Usage | None = None
    chunk_size: int = 8
    chunk_delay: float = 0.0
    finish_reason: str | None = None
    interleave_tool_calls: bool = False
    abort_after_chunks: int | None = None


@dataclass(frozen=True)
class Failure:
    """Answer with an HTTP error in OpenAI's error JSON shape (and `Retry-After` if given)."""

    status: int
    message: str = "scripted failure"
    retry_after: float | None = None
    type: str | None = None
    code: str | None = None


@dataclass(frozen=True)
class Delay:
    """Wait `seconds` before answering with `then` (default: echo). Watches for disconnects."""

    seconds: float
    then: Turn | Failure | str | None = None


ScriptItem = Turn | Failure | Delay | str
ScriptFunction = Callable[["ChatRequest"], ScriptItem | Awaitable[ScriptItem]]


@dataclass
class ChatRequest:
    """One chat completion request as the server received it."""

    index: int
    body: dict[str, Any]
    headers: dict[str, str]
    disconnected: bool = False
    """Set when the client went away before the answer was complete."""
    completed: bool = False
    """Set when the whole answer was sent."""

    @property
    def model(self) -> str:
        return str(self.body.get("model", ""))

    @property
    def messages(self) -> list[dict[str, Any]]:
        return list(self.body.get("messages") or [])

    @property
    def tools(self) -> list[dict[str, Any]]:
        return list(self.body.get("tools") or [])

    @property
    def tool_names(self) -> list[str]:
        return [str(t.get("function", {}).get("name", "")) for t in self.tools]

    @property
    def tool_choice(self) -> Any:
        return self.body.get("tool_choice")

    @property
    def response_format(self) -> dict[str, Any] | None:
        rf = self.body.get("response_format")
        return rf if isinstance(rf, dict) else None

    @property
    def json_schema(self) -> dict[str, Any] | None:
        """The schema of a `json_schema` response_format, if any."""
        rf = self.response_format
        if rf and rf.get("type") == "json_schema":
            schema = (rf.get("json_schema") or {}).get("schema")
            return schema if isinstance(schema, dict) else None
        return None

    @property
    def stream(self) -> bool:
        return bool(self.body.get("stream"))

    @property
    def include_usage(self) -> bool:
        return bool((self.body.get("stream_options") or {}).get("include_usage"))

    @property
    def last_user_text(self) -> str:
        for message in reversed(self.messages):
            if message.get("role") == "user":
                return content_text(message.get("content"))
        return ""

    @property
    def tool_results(self) -> list[dict[str, Any]]:
        """The `role: tool` messages sent back to the model."""
        return [m for m in self.messages if m.get("role") == "tool"]


@dataclass
class EmbeddingRequest:
    body: dict[str, Any]
    headers: dict[str, str]


def content_text(content: Any) -> str:
    """The text of a message `content` (a string or a list of content parts)."""
    if content is None:
        return ""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return "".join(
            str(p.get("text", ""))
            for p in content
            if isinstance(p, dict) and p.get("type") == "text"
        )
    return str(content)


def echo(request: ChatRequest) -> Turn:
    """The default script: answer with the last user message."""
    return Turn(text=request.last_user_text)


# --------------------------------------------------------------------------- embeddings

_WORD = re.compile(r"\w+", re.UNICODE)


@functools.lru_cache(maxsize=65536)
def _token_vector(token: str, dimension: int) -> tuple[float, ...]:
    seed = int.from_bytes(hashlib.sha256(token.encode("utf-8")).digest()[:8], "big")
    rng = random.Random(seed)
    return tuple(rng.gauss(0.0, 1.0) for _ in range(dimension))


def pseudo_embedding(text: str, dimension: int = DEFAULT_EMBEDDING_DIMENSION) -> list[float]:
    """A deterministic, L2-normalised vector for `text`.

    Hashed bag of words: each lower-cased word has a fixed pseudo-random direction and
    a text is the normalised sum of its words', so texts sharing words are close (useful
    for RAG tests) while the same text always maps to the same vector.
    """
    if dimension <= 0:
        raise ValueError("dimension must be positive")
    tokens = _WORD.findall(text.lower()) or [text]
    total = [0.0] * dimension
    for token in tokens:
        for i, value in enumerate(_token_vector(token, dimension)):
            total[i] += value
    norm = math.sqrt(sum(v * v for v in total)) or 1.0
    return [v / norm for v in total]


# --------------------------------------------------------------------------- server


class _HideScriptedAborts(logging.Filter):
    """Drops uvicorn's traceback for a stream this server broke on purpose."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not (record.exc_info and isinstance(record.exc_info[1], _Aborted))


_ABORT_FILTER = _HideScriptedAborts()


class _QuietServer(uvicorn.Server):
    """A uvicorn server that never touches the process's signal handlers."""

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        yield


def _error_type(status: int) -> str:
    if status == 401:
        return "authentication_error"
    if status == 403:
        return "permission_error"
    if status == 404:
        return "not_found_error"
    if status == 429:
        return "rate_limit_error"
    if status >= 500:
        return "server_error"
    return "invalid_request_error"


def _error_response(failure: Failure) -> JSONResponse:
    headers: dict[str, str] = {}
    if failure.retry_after is not None:
        headers["retry-after"] = format(failure.retry_after, "g")
    body = {
        "error": {
            "message": failure.message,
            "type": failure.type or _error_type(failure.status),
            "param": None,
            "code": failure.code,
        }
    }
    return JSONResponse(body, status_code=failure.status, headers=headers)


def _pieces(text: str, size: int) -> list[str]:
    size = max(1, size)
    return [text[i : i + size] for i in range(0, len(text), size)]


def _rough_tokens(text: str) -> int:
    return len(text.split())


class _Aborted(Exception):
    """Raised inside a streaming body to drop the connection mid-stream."""


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
            return _error_response(Failure(400, "request body must be a JSON object"))
        self.embedding_requests.append(EmbeddingRequest(body, dict(request.headers)))
        raw = body.get("input")
        if isinstance(raw, str):
            inputs: list[str] = [raw]
        elif isinstance(raw, list) and raw and all(isinstance(x, int) for x in raw):
            inputs = [" ".join(map(str, raw))]
        elif isinstance(raw, list) and raw:
            inputs = [x if isinstance(x, str) else " ".join(map(str, x)) for x in raw]
        else:
            return _error_response(Failure(400, "'input' must be a string or a non-empty list"))
        dimension = body.get("dimensions") or self.embedding_dimension
        if not isinstance(dimension, int) or dimension <= 0:
            return _error_response(Failure(400, "'dimensions' must be a positive integer"))
        as_base64 = body.get("encoding_format") == "base64"
        data = []
        for i, text in enumerate(inputs):
            vector = pseudo_embedding(text, dimension)
            embedding: list[float] | str = (
                base64.b64encode(struct.pack(f"<{dimension}f", *vector)).decode("ascii")
                if as_base64
                else vector
            )
            data.append({"object": "embedding", "index": i, "embedding": embedding})
        tokens = sum(_rough_tokens(t) for t in inputs)
        return JSONResponse(
            {
                "object": "list",
                "data": data,
                "model": body.get("model") or "scripted-embedding",
                "usage": {"prompt_tokens": tokens, "total_tokens": tokens},
            }
        )

    async def _chat(self, request: Request) -> Response:
        body = await self._read_json(request)
        if body is None:
            return _error_response(Failure(400, "request body must be a JSON object"))
        chat = ChatRequest(index=len(self.requests), body=body, headers=dict(request.headers))
        self.requests.append(chat)
        if not isinstance(body.get("messages"), list) or not body["messages"]:
            return _error_response(Failure(400, "'messages' must be a non-empty array"))
        try:
            item: ScriptItem | None = await self._next_item(chat)
        except Exception as exc:
            return _error_response(Failure(500, f"scripted model server: script raised {exc!r}"))
        while isinstance(item, Delay):
            if not await self._sleep_watching(request, item.seconds):
                chat.disconnected = True
                return Response(status_code=499)
            item = item.then if item.then is not None else echo(chat)
        if isinstance(item, str):
            item = Turn(text=item)
        if isinstance(item, Failure):
            chat.completed = True
            return _error_response(item)
        assert isinstance(item, Turn)
        if chat.stream:
            return StreamingResponse(
                self._sse(chat, item),
                media_type="text/event-stream",
                headers={"cache-control": "no-cache"},
            )
        chat.completed = True
        return JSONResponse(self._completion(chat, item))

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

    # ---- answer shapes

    def _usage(self, chat: ChatRequest, turn: Turn) -> Usage:
        if turn.usage is not None:
            return turn.usage
        prompt = sum(_rough_tokens(content_text(m.get("content"))) for m in chat.messages)
        completion = _rough_tokens(turn.text) + sum(
            _rough_tokens(c.arguments_json()) + 1 for c in turn.tool_calls
        )
        return Usage(prompt_tokens=max(prompt, 1), completion_tokens=max(completion, 1))

    @staticmethod
    def _call_ids(chat: ChatRequest, turn: Turn) -> list[str]:
        return [
            c.id or f"call_{chat.index}_{i}_{uuid.uuid4().hex[:8]}"
            for i, c in enumerate(turn.tool_calls)
        ]

    @staticmethod
    def _finish_reason(turn: Turn) -> str:
        return turn.finish_reason or ("tool_calls" if turn.tool_calls else "stop")

    def _completion(self, chat: ChatRequest, turn: Turn) -> dict[str, Any]:
        message: dict[str, Any] = {
            "role": "assistant",
            "content": turn.text if (turn.text or not turn.tool_calls) else None,
            "refusal": None,
        }
        if turn.tool_calls:
            message["tool_calls"] = [
                {
                    "id": call_id,
                    "type": "function",
                    "function": {"name": call.name, "arguments": call.arguments_json()},
                }
                for call_id, call in zip(self._call_ids(chat, turn), turn.tool_calls, strict=True)
            ]
        return {
            "id": f"chatcmpl-{uuid.uuid4().hex[:24]}",
            "object": "chat.completion",
            "created": int(time.time()),
            "model": chat.model or self.model,
            "choices": [
                {
                    "index": 0,
                    "message": message,
                    "finish_reason": self._finish_reason(turn),
                    "logprobs": None,
                }
            ],
            "usage": self._usage(chat, turn).as_dict(),
        }

    def _deltas(self, chat: ChatRequest, turn: Turn) -> list[dict[str, Any]]:
        """The `delta` objects of the stream, in order, before the finishing chunk."""
        deltas: list[dict[str, Any]] = [{"role": "assistant", "content": ""}]
        deltas.extend({"content": piece} for piece in _pieces(turn.text, turn.chunk_size))
        per_call: list[list[dict[str, Any]]] = []
        for index, (call_id, call) in enumerate(
            zip(self._call_ids(chat, turn), turn.tool_calls, strict=True)
        ):
            head = {
                "index": index,
                "id": call_id,
                "type": "function",
                "function": {"name": call.name, "arguments": ""},
            }
            pieces = [
                {"index": index, "function": {"arguments": piece}}
                for piece in _pieces(call.arguments_json(), turn.chunk_size)
            ]
            per_call.append([head, *pieces])
        if turn.interleave_tool_calls:
            longest = max((len(p) for p in per_call), default=0)
            ordered = [p[i] for i in range(longest) for p in per_call if i < len(p)]
        else:
            ordered = [d for p in per_call for d in p]
        deltas.extend({"tool_calls": [d]} for d in ordered)
        return deltas

    async def _sse(self, chat: ChatRequest, turn: Turn) -> AsyncIterator[bytes]:
        completion_id = f"chatcmpl-{uuid.uuid4().hex[:24]}"
        created = int(time.time())
        model = chat.model or self.model

        def chunk(choices: list[dict[str, Any]], usage: dict[str, int] | None = None) -> bytes:
            payload: dict[str, Any] = {
                "id": completion_id,
                "object": "chat.completion.chunk",
                "created": created,
                "model": model,
                "choices": choices,
            }
            if usage is not None or chat.include_usage:
                payload["usage"] = usage
            return b"data: " + json.dumps(payload, separators=(",", ":")).encode() + b"\n\n"

        sent = 0
        try:
            for delta in self._deltas(chat, turn):
                if turn.abort_after_chunks is not None and sent >= turn.abort_after_chunks:
                    raise _Aborted("scripted stream abort")
                if sent and turn.chunk_delay:
                    await asyncio.sleep(turn.chunk_delay)
                yield chunk([{"index": 0, "delta": delta, "finish_reason": None, "logprobs": None}])
                sent += 1
            yield chunk(
                [
                    {
                        "index": 0,
                        "delta": {},
                        "finish_reason": self._finish_reason(turn),
                        "logprobs": None,
                    }
                ]
            )
            if chat.include_usage:
                yield chunk([], self._usage(chat, turn).as_dict())
            yield b"data: [DONE]\n\n"
            chat.completed = True
        except (asyncio.CancelledError, GeneratorExit, OSError):
            chat.disconnected = True
            raise
