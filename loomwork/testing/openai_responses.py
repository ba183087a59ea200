"""A scripted answer in the OpenAI HTTP API's shapes: chat completions (JSON and SSE
chunks), embeddings lists and error bodies, as the real `openai` client expects them."""

from __future__ import annotations

import asyncio
import base64
import json
import struct
import time
import uuid
from collections.abc import AsyncIterator
from typing import Any

from starlette.responses import JSONResponse

from loomwork.testing.pseudo_embeddings import pseudo_embedding
from loomwork.testing.script import ChatRequest, Failure, Turn, Usage, content_text


class StreamAborted(Exception):
    """Raised inside a streaming body to drop the connection mid-stream."""


def error_type(status: int) -> str:
    """OpenAI's error `type` for an HTTP status."""
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


def error_response(failure: Failure) -> JSONResponse:
    """The failure as OpenAI's error JSON, with `Retry-After` when it has one."""
    headers: dict[str, str] = {}
    if failure.retry_after is not None:
        headers["retry-after"] = format(failure.retry_after, "g")
    body = {
        "error": {
            "message": failure.message,
            "type": failure.type or error_type(failure.status),
            "param": None,
            "code": failure.code,
        }
    }
    return JSONResponse(body, status_code=failure.status, headers=headers)


def pieces(text: str, size: int) -> list[str]:
    """`text` cut into pieces of `size` characters (the last may be shorter)."""
    size = max(1, size)
    return [text[i : i + size] for i in range(0, len(text), size)]


def rough_tokens(text: str) -> int:
    """A token count good enough for usage figures: the number of words."""
    return len(text.split())


def usage_of(chat: ChatRequest, turn: Turn) -> Usage:
    """The turn's own usage, or a rough word count of the request and the answer."""
    if turn.usage is not None:
        return turn.usage
    prompt = sum(rough_tokens(content_text(m.get("content"))) for m in chat.messages)
    completion = rough_tokens(turn.text) + sum(
        rough_tokens(c.arguments_json()) + 1 for c in turn.tool_calls
    )
    return Usage(prompt_tokens=max(prompt, 1), completion_tokens=max(completion, 1))


def call_ids(chat: ChatRequest, turn: Turn) -> list[str]:
    """The id of each tool call of the turn: its own, or a fresh one."""
    return [
        c.id or f"call_{chat.index}_{i}_{uuid.uuid4().hex[:8]}"
        for i, c in enumerate(turn.tool_calls)
    ]


def finish_reason(turn: Turn) -> str:
    return turn.finish_reason or ("tool_calls" if turn.tool_calls else "stop")


def completion(chat: ChatRequest, turn: Turn, model: str) -> dict[str, Any]:
    """The turn as one `chat.completion` object (a request without `stream`)."""
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
            for call_id, call in zip(call_ids(chat, turn), turn.tool_calls, strict=True)
        ]
    return {
        "id": f"chatcmpl-{uuid.uuid4().hex[:24]}",
        "object": "chat.completion",
        "created": int(time.time()),
        "model": chat.model or model,
        "choices": [
            {
                "index": 0,
                "message": message,
                "finish_reason": finish_reason(turn),
                "logprobs": None,
            }
        ],
        "usage": usage_of(chat, turn).as_dict(),
    }


def deltas(chat: ChatRequest, turn: Turn) -> list[dict[str, Any]]:
    """The `delta` objects of the stream, in order, before the finishing chunk."""
    out: list[dict[str, Any]] = [{"role": "assistant", "content": ""}]
    out.extend({"content": piece} for piece in pieces(turn.text, turn.chunk_size))
    per_call: list[list[dict[str, Any]]] = []
    for index, (call_id, call) in enumerate(
        zip(call_ids(chat, turn), turn.tool_calls, strict=True)
    ):
        head = {
            "index": index,
            "id": call_id,
            "type": "function",
            "function": {"name": call.name, "arguments": ""},
        }
        argument_pieces = [
            {"index": index, "function": {"arguments": piece}}
            for piece in pieces(call.arguments_json(), turn.chunk_size)
        ]
        per_call.append([head, *argument_pieces])
    if turn.interleave_tool_calls:
        longest = max((len(p) for p in per_call), default=0)
        ordered = [p[i] for i in range(longest) for p in per_call if i < len(p)]
    else:
        ordered = [d for p in per_call for d in p]
    out.extend({"tool_calls": [d]} for d in ordered)
    return out


async def completion_chunks(chat: ChatRequest, turn: Turn, model: str) -> AsyncIterator[bytes]:
    """The turn as server-sent `chat.completion.chunk` events, ending with `[DONE]`; marks
    the request completed, or disconnected when the client goes away first."""
    completion_id = f"chatcmpl-{uuid.uuid4().hex[:24]}"
    created = int(time.time())
    answered_by = chat.model or model

    def chunk(choices: list[dict[str, Any]], usage: dict[str, Any] | None = None) -> bytes:
        payload: dict[str, Any] = {
            "id": completion_id,
            "object": "chat.completion.chunk",
            "created": created,
            "model": answered_by,
            "choices": choices,
        }
        if usage is not None or chat.include_usage:
            payload["usage"] = usage
        return b"data: " + json.dumps(payload, separators=(",", ":")).encode() + b"\n\n"

    sent = 0
    try:
        for delta in deltas(chat, turn):
            if turn.abort_after_chunks is not None and sent >= turn.abort_after_chunks:
                raise StreamAborted("scripted stream abort")
            if sent and turn.chunk_delay:
                await asyncio.sleep(turn.chunk_delay)
            yield chunk([{"index": 0, "delta": delta, "finish_reason": None, "logprobs": None}])
            sent += 1
        yield chunk(
            [{"index": 0, "delta": {}, "finish_reason": finish_reason(turn), "logprobs": None}]
        )
        if chat.include_usage:
            yield chunk([], usage_of(chat, turn).as_dict())
        yield b"data: [DONE]\n\n"
        chat.completed = True
    except (asyncio.CancelledError, GeneratorExit, OSError):
        chat.disconnected = True
        raise


def embeddings(body: dict[str, Any], default_dimension: int) -> dict[str, Any] | Failure:
    """The embeddings list answering an `/embeddings` request body, or why it is invalid."""
    raw = body.get("input")
    if isinstance(raw, str):
        inputs: list[str] = [raw]
    elif isinstance(raw, list) and raw and all(isinstance(x, int) for x in raw):
        inputs = [" ".join(map(str, raw))]
    elif isinstance(raw, list) and raw:
        inputs = [x if isinstance(x, str) else " ".join(map(str, x)) for x in raw]
    else:
        return Failure(400, "'input' must be a string or a non-empty list")
    dimension = body.get("dimensions") or default_dimension
    if not isinstance(dimension, int) or dimension <= 0:
        return Failure(400, "'dimensions' must be a positive integer")
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
    tokens = sum(rough_tokens(t) for t in inputs)
    return {
        "object": "list",
        "data": data,
        "model": body.get("model") or "scripted-embedding",
        "usage": {"prompt_tokens": tokens, "total_tokens": tokens},
    }
