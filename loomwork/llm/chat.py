"""`ChatModel`: the one way the domain calls a chat model.

It drives the real `openai` client (Chat Completions: tools, streaming, structured
output) against any OpenAI-compatible endpoint, with the client's own retries off:
Temporal retries the activity, guided by `ModelError.retryable` / `retry_after`.
Messages go in as the memory models (`Message`, `NewMessage`) or `ChatMessage`, and
come back as a `ChatResult` whose tool calls are memory `ToolCallPart`s.
Cancelling the task running `stream()` / `complete()` aborts the HTTP request.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import re
from collections.abc import Awaitable, Callable, Mapping, Sequence
from contextlib import AbstractAsyncContextManager, AbstractContextManager
from typing import Annotated, Any, Literal, cast

import openai
from openai.types.chat import ChatCompletion, ChatCompletionChunk
from pydantic import BaseModel, ConfigDict, Field

from loomwork.llm.errors import ModelError, is_transport_error, model_error_from
from loomwork.messages import (
    Message,
    NewMessage,
    Part,
    Role,
    TextPart,
    ToolCallPart,
    ToolResultPart,
)
from loomwork.telemetry import ModelCall, model_call

__all__ = [
    "ChatEvent",
    "ChatMessage",
    "ChatModel",
    "ChatResult",
    "ChatUsage",
    "TextDelta",
    "ToolCallDelta",
    "ToolCallDone",
    "ToolSpec",
    "json_schema_format",
    "to_openai_messages",
]

NO_KEY = "sk-no-key"


# --------------------------------------------------------------------------- boundary models


class ChatMessage(BaseModel):
    """A message for the model that is not (yet) stored: same role and parts as memory's."""

    model_config = ConfigDict(frozen=True)
    role: Role
    parts: list[Part]

    @classmethod
    def system(cls, text: str) -> ChatMessage:
        return cls(role=Role.SYSTEM, parts=[TextPart(text=text)])

    @classmethod
    def user(cls, text: str) -> ChatMessage:
        return cls(role=Role.USER, parts=[TextPart(text=text)])

    @classmethod
    def assistant(cls, text: str = "", tool_calls: Sequence[ToolCallPart] = ()) -> ChatMessage:
        parts: list[Part] = [TextPart(text=text)] if text else []
        parts.extend(tool_calls)
        return cls(role=Role.ASSISTANT, parts=parts)

    @classmethod
    def tool(cls, *results: ToolResultPart) -> ChatMessage:
        return cls(role=Role.TOOL, parts=list(results))


AnyMessage = ChatMessage | Message | NewMessage


class ToolSpec(BaseModel):
    """A tool the model may call; `parameters` is the JSON schema of its arguments."""

    model_config = ConfigDict(frozen=True)
    name: str = Field(pattern=r"^[a-zA-Z0-9_-]{1,64}$")
    description: str = ""
    parameters: dict[str, Any] = Field(default_factory=lambda: {"type": "object", "properties": {}})
    strict: bool | None = None

    def to_openai(self) -> dict[str, Any]:
        function: dict[str, Any] = {"name": self.name, "parameters": self.parameters}
        if self.description:
            function["description"] = self.description
        if self.strict is not None:
            function["strict"] = self.strict
        return {"type": "function", "function": function}


class ChatUsage(BaseModel):
    """Tokens of one or more model calls as the model reported them; `cached_tokens` are
    the part of `prompt_tokens` it served from its prompt cache."""

    prompt_tokens: int = 0
    completion_tokens: int = 0
    total_tokens: int = 0
    cached_tokens: int = 0

    def plus(self, other: ChatUsage) -> ChatUsage:
        """The usage of both, added up."""
        return ChatUsage(
            prompt_tokens=self.prompt_tokens + other.prompt_tokens,
            completion_tokens=self.completion_tokens + other.completion_tokens,
            total_tokens=self.total_tokens + other.total_tokens,
            cached_tokens=self.cached_tokens + other.cached_tokens,
        )


class ChatResult(BaseModel):
    """What the model answered.

    `argument_errors` maps a tool call id to why its arguments were not a JSON object
    (that call's `arguments` is then `{}`): the agent loop sends this back to the model
    as the tool's result instead of running the tool.
    """

    text: str = ""
    tool_calls: list[ToolCallPart] = Field(default_factory=list)
    finish_reason: str = ""
    usage: ChatUsage = Field(default_factory=ChatUsage)
    model: str = ""
    argument_errors: dict[str, str] = Field(default_factory=dict)

    def assistant_message(self) -> ChatMessage:
        """This answer as the assistant message to append to the conversation."""
        return ChatMessage.assistant(self.text, self.tool_calls)

    def json_value(self) -> Any:
        """The text parsed as JSON (structured output); ValueError if it is not JSON."""
        return json.loads(self.text)


class TextDelta(BaseModel):
    type: Literal["text_delta"] = "text_delta"
    delta: str


class ToolCallDelta(BaseModel):
    """A piece of a tool call's arguments (id and name as known so far)."""

    type: Literal["tool_call_delta"] = "tool_call_delta"
    index: int
    tool_call_id: str
    tool_name: str
    arguments_delta: str


class ToolCallDone(BaseModel):
    """A tool call complete with its parsed arguments (sent when the answer is complete)."""

    type: Literal["tool_call"] = "tool_call"
    index: int
    call: ToolCallPart
    arguments_error: str | None = None


ChatEvent = Annotated[TextDelta | ToolCallDelta | ToolCallDone, Field(discriminator="type")]
OnEvent = Callable[[TextDelta | ToolCallDelta | ToolCallDone], Awaitable[None]]


def json_schema_format(
    schema: dict[str, Any], *, name: str = "output", strict: bool = False
) -> dict[str, Any]:
    """An OpenAI `response_format` asking for JSON that matches `schema`."""
    safe = re.sub(r"[^a-zA-Z0-9_-]", "_", name)[:64] or "output"
    return {
        "type": "json_schema",
        "json_schema": {"name": safe, "schema": schema, "strict": strict},
    }


def _response_format(value: dict[str, Any] | type[BaseModel] | None) -> dict[str, Any] | None:
    if value is None:
        return None
    if isinstance(value, type) and issubclass(value, BaseModel):
        return json_schema_format(value.model_json_schema(), name=value.__name__)
    return dict(cast(Mapping[str, Any], value))


# --------------------------------------------------------------------------- conversions


def _json_text(value: Any) -> str:
    if isinstance(value, str):
        return value
    return json.dumps(value, default=str, ensure_ascii=False)


def _tool_content(part: ToolResultPart) -> str:
    if not part.is_error:
        return _json_text(part.result)
    if isinstance(part.result, str):
        return f"Error: {part.result}"
    return json.dumps({"error": part.result}, default=str, ensure_ascii=False)


def to_openai_messages(messages: Sequence[AnyMessage]) -> list[dict[str, Any]]:
    """Domain messages in the Chat Completions shape (a tool message per tool result)."""
    out: list[dict[str, Any]] = []
    for message in messages:
        role = Role(message.role)
        text = "".join(p.text for p in message.parts if isinstance(p, TextPart))
        if role in (Role.SYSTEM, Role.USER):
            out.append({"role": role.value, "content": text})
        elif role is Role.ASSISTANT:
            calls = [p for p in message.parts if isinstance(p, ToolCallPart)]
            entry: dict[str, Any] = {"role": "assistant", "content": text or None}
            if calls:
                entry["tool_calls"] = [
                    {
                        "id": c.tool_call_id,
                        "type": "function",
                        "function": {
                            "name": c.tool_name,
                            "arguments": json.dumps(c.arguments, default=str),
                        },
                    }
                    for c in calls
                ]
            elif not text:
                entry["content"] = ""
            out.append(entry)
        else:
            out.extend(
                {"role": "tool", "tool_call_id": p.tool_call_id, "content": _tool_content(p)}
                for p in message.parts
                if isinstance(p, ToolResultPart)
            )
    return out


def _parse_arguments(raw: str) -> tuple[dict[str, Any], str | None]:
    if not raw.strip():
        return {}, None
    try:
        value = json.loads(raw)
    except ValueError as exc:
        return {}, f"arguments are not valid JSON ({exc}): {raw[:500]}"
    if not isinstance(value, dict):
        return {}, f"arguments must be a JSON object, got: {raw[:500]}"
    return value, None


def _usage(usage: Any) -> ChatUsage:
    if usage is None:
        return ChatUsage()
    details = getattr(usage, "prompt_tokens_details", None)
    return ChatUsage(
        prompt_tokens=usage.prompt_tokens or 0,
        completion_tokens=usage.completion_tokens or 0,
        total_tokens=usage.total_tokens or 0,
        cached_tokens=(getattr(details, "cached_tokens", None) or 0) if details else 0,
    )


class _CallBuffer:
    def __init__(self, index: int) -> None:
        self.index = index
        self.id = ""
        self.name = ""
        self.arguments: list[str] = []


# --------------------------------------------------------------------------- the model


class ChatModel:
    """A chat model behind an OpenAI-compatible endpoint."""

    def __init__(
        self,
        model: str,
        *,
        base_url: str | None = None,
        api_key: str | None = None,
        timeout: float = 120.0,
        client: openai.AsyncOpenAI | None = None,
        slots: asyncio.Semaphore | None = None,
    ) -> None:
        self.model = model
        # Calls in flight at once, shared by the models of a process (None: no bound).
        self.slots = slots
        self._owns_client = client is None
        self.client = client or openai.AsyncOpenAI(
            base_url=base_url or os.environ.get("OPENAI_BASE_URL") or None,
            api_key=api_key or os.environ.get("OPENAI_API_KEY") or NO_KEY,
            timeout=timeout,
            max_retries=0,
        )

    @classmethod
    def from_settings(cls, settings: Any, *, timeout: float = 120.0) -> ChatModel:
        """From `loomwork.config.Settings`: OPENAI_BASE_URL, OPENAI_API_KEY, LOOMWORK_CHAT_MODEL."""
        return cls(
            settings.chat_model,
            base_url=settings.openai_base_url,
            api_key=settings.openai_api_key,
            timeout=timeout,
        )

    async def aclose(self) -> None:
        if self._owns_client:
            await self.client.close()

    async def __aenter__(self) -> ChatModel:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    def _params(
        self,
        messages: Sequence[AnyMessage],
        tools: Sequence[ToolSpec],
        response_format: dict[str, Any] | type[BaseModel] | None,
        tool_choice: str | dict[str, Any] | None,
        temperature: float | None,
        max_tokens: int | None,
        top_p: float | None = None,
    ) -> dict[str, Any]:
        params: dict[str, Any] = {
            "model": self.model,
            "messages": to_openai_messages(messages),
        }
        if tools:
            params["tools"] = [t.to_openai() for t in tools]
            if tool_choice is not None:
                params["tool_choice"] = tool_choice
        rf = _response_format(response_format)
        if rf is not None:
            params["response_format"] = rf
        if temperature is not None:
            params["temperature"] = temperature
        if top_p is not None:
            params["top_p"] = top_p
        if max_tokens is not None:
            params["max_completion_tokens"] = max_tokens
        return params

    async def _create(self, params: dict[str, Any]) -> Any:
        """POST /chat/completions through the SDK's client (its auth, timeouts, errors and
        stream parsing), with the body as built here: `chat.completions.create` would first
        walk these plain JSON params against its TypedDicts (~0.5 ms of CPU per call with a
        few tool schemas, on every model step), changing nothing in them."""
        return await self.client.post(
            "/chat/completions",
            cast_to=ChatCompletion,
            body=params,
            stream=bool(params.get("stream")),
            stream_cls=openai.AsyncStream[ChatCompletionChunk],
        )

    async def complete(
        self,
        messages: Sequence[AnyMessage],
        *,
        tools: Sequence[ToolSpec] = (),
        response_format: dict[str, Any] | type[BaseModel] | None = None,
        tool_choice: str | dict[str, Any] | None = None,
        temperature: float | None = None,
        max_tokens: int | None = None,
        top_p: float | None = None,
    ) -> ChatResult:
        """One non-streaming completion."""
        params = self._params(
            messages, tools, response_format, tool_choice, temperature, max_tokens, top_p
        )
        async with self._slot():
            with self._traced(params) as traced:
                result = await self._complete(params)
                _answered(traced, result)
        return result

    def _slot(self) -> AbstractAsyncContextManager[object]:
        return self.slots if self.slots is not None else contextlib.nullcontext()

    def _traced(self, params: dict[str, Any]) -> AbstractContextManager[ModelCall]:
        """The call's span and metrics (loomwork.telemetry.model_call)."""
        return model_call(
            self.model,
            server_address=self.client.base_url.host or "",
            temperature=params.get("temperature"),
            top_p=params.get("top_p"),
            max_tokens=params.get("max_completion_tokens"),
        )

    async def _complete(self, params: dict[str, Any]) -> ChatResult:
        try:
            completion = await self._create(params)
        except Exception as exc:
            mapped = _mapped(exc)
            if mapped is exc:
                raise
            raise mapped from exc
        if not completion.choices:
            raise ModelError("model answered with no choices", retryable=True)
        choice = completion.choices[0]
        calls: list[ToolCallPart] = []
        errors: dict[str, str] = {}
        for tool_call in choice.message.tool_calls or []:
            function = getattr(tool_call, "function", None)
            if function is None:
                continue
            arguments, error = _parse_arguments(function.arguments or "")
            calls.append(
                ToolCallPart(
                    tool_call_id=tool_call.id, tool_name=function.name, arguments=arguments
                )
            )
            if error:
                errors[tool_call.id] = error
        return ChatResult(
            text=choice.message.content or "",
            tool_calls=calls,
            finish_reason=choice.finish_reason or "",
            usage=_usage(completion.usage),
            model=completion.model or self.model,
            argument_errors=errors,
        )

    async def stream(
        self,
        messages: Sequence[AnyMessage],
        *,
        tools: Sequence[ToolSpec] = (),
        response_format: dict[str, Any] | type[BaseModel] | None = None,
        on_event: OnEvent | None = None,
        tool_choice: str | dict[str, Any] | None = None,
        temperature: float | None = None,
        max_tokens: int | None = None,
        top_p: float | None = None,
    ) -> ChatResult:
        """A streamed completion: `on_event` gets text deltas and tool-call events as they come."""
        params = self._params(
            messages, tools, response_format, tool_choice, temperature, max_tokens, top_p
        )
        params["stream"] = True
        params["stream_options"] = {"include_usage": True}
        async with self._slot():
            with self._traced(params) as traced:
                result = await self._stream(params, on_event)
                _answered(traced, result)
        return result

    async def _stream(self, params: dict[str, Any], on_event: OnEvent | None) -> ChatResult:
        text: list[str] = []
        buffers: dict[int, _CallBuffer] = {}
        finish_reason = ""
        usage = ChatUsage()
        model = self.model
        try:
            stream = await self._create(params)
            try:
                async for chunk in stream:
                    model = chunk.model or model
                    if chunk.usage is not None:
                        usage = _usage(chunk.usage)
                    for choice in chunk.choices[:1]:
                        if choice.finish_reason:
                            finish_reason = choice.finish_reason
                        delta = choice.delta
                        if delta is None:
                            continue
                        if delta.content:
                            text.append(delta.content)
                            await _emit(on_event, TextDelta(delta=delta.content))
                        for piece in delta.tool_calls or []:
                            buffer = buffers.get(piece.index)
                            if buffer is None:
                                buffer = buffers[piece.index] = _CallBuffer(piece.index)
                            if piece.id:
                                buffer.id = piece.id
                            function = piece.function
                            piece_args = ""
                            if function is not None:
                                if function.name and not buffer.name:
                                    buffer.name = function.name
                                piece_args = function.arguments or ""
                            if piece_args:
                                buffer.arguments.append(piece_args)
                            if piece_args or piece.id:
                                await _emit(
                                    on_event,
                                    ToolCallDelta(
                                        index=buffer.index,
                                        tool_call_id=buffer.id,
                                        tool_name=buffer.name,
                                        arguments_delta=piece_args,
                                    ),
                                )
            finally:
                await stream.close()
        except _CallbackFailed as failed:
            raise failed.error from None
        except Exception as exc:
            mapped = _mapped(exc)
            if mapped is exc:
                raise
            raise mapped from exc

        calls: list[ToolCallPart] = []
        errors: dict[str, str] = {}
        for index in sorted(buffers):
            buffer = buffers[index]
            call_id = buffer.id or f"call_{index}"
            arguments, error = _parse_arguments("".join(buffer.arguments))
            call = ToolCallPart(tool_call_id=call_id, tool_name=buffer.name, arguments=arguments)
            calls.append(call)
            if error:
                errors[call_id] = error
            if on_event is not None:
                await on_event(ToolCallDone(index=index, call=call, arguments_error=error))
        return ChatResult(
            text="".join(text),
            tool_calls=calls,
            finish_reason=finish_reason,
            usage=usage,
            model=model,
            argument_errors=errors,
        )


def _answered(traced: ModelCall, result: ChatResult) -> None:
    traced.answered(
        model=result.model,
        finish_reason=result.finish_reason,
        input_tokens=result.usage.prompt_tokens,
        output_tokens=result.usage.completion_tokens,
    )


class _CallbackFailed(Exception):
    """Carries an exception raised by `on_event` past the model-error mapping."""

    def __init__(self, error: Exception) -> None:
        super().__init__(repr(error))
        self.error = error


async def _emit(on_event: OnEvent | None, event: TextDelta | ToolCallDelta | ToolCallDone) -> None:
    if on_event is None:
        return
    try:
        await on_event(event)
    except Exception as exc:
        raise _CallbackFailed(exc) from exc


def _mapped(exc: Exception) -> Exception:
    """The ModelError for a failure of the HTTP call; anything else (a bug) as is."""
    if isinstance(exc, (openai.OpenAIError, OSError, TimeoutError)) or is_transport_error(exc):
        return model_error_from(exc)
    return exc
