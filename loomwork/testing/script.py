"""What the scripted model answers, and the requests it records.

A script is a queue of items answered in order, or a function `(ChatRequest) -> item`
(sync or async) that decides each answer from what the model was sent. An item is a
`Turn` (text and/or tool calls), a `Failure` (an HTTP error), a `Delay` or plain text.
"""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import Any


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
    """Token counts of one answer, as the model reports them; `cached_tokens`, the part of
    the prompt served from the model's cache, goes out as `prompt_tokens_details`."""

    prompt_tokens: int
    completion_tokens: int
    cached_tokens: int = 0

    def as_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "prompt_tokens": self.prompt_tokens,
            "completion_tokens": self.completion_tokens,
            "total_tokens": self.prompt_tokens + self.completion_tokens,
        }
        if self.cached_tokens:
            out["prompt_tokens_details"] = {"cached_tokens": self.cached_tokens}
        return out


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
    """One embeddings request as the server received it."""

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
