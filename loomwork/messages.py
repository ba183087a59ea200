"""Threads, messages and their parts: the conversation types that memory, storage and the
model client share."""

from __future__ import annotations

from datetime import datetime
from enum import StrEnum
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, TypeAdapter


class Role(StrEnum):
    SYSTEM = "system"
    USER = "user"
    ASSISTANT = "assistant"
    TOOL = "tool"


class TextPart(BaseModel):
    model_config = ConfigDict(frozen=True)
    type: Literal["text"] = "text"
    text: str


class ToolCallPart(BaseModel):
    model_config = ConfigDict(frozen=True)
    type: Literal["tool_call"] = "tool_call"
    tool_call_id: str
    tool_name: str
    arguments: dict[str, Any] = Field(default_factory=dict)


class ToolResultPart(BaseModel):
    model_config = ConfigDict(frozen=True)
    type: Literal["tool_result"] = "tool_result"
    tool_call_id: str
    tool_name: str = ""
    result: Any = None
    is_error: bool = False


Part = Annotated[TextPart | ToolCallPart | ToolResultPart, Field(discriminator="type")]

# Which part kinds each role may carry.
ALLOWED_PARTS: dict[Role, tuple[str, ...]] = {
    Role.SYSTEM: ("text",),
    Role.USER: ("text",),
    Role.ASSISTANT: ("text", "tool_call"),
    Role.TOOL: ("tool_result",),
}


class Thread(BaseModel):
    id: str
    resource_id: str = ""
    title: str = ""
    metadata: dict[str, Any] = Field(default_factory=dict)
    create_time: datetime
    update_time: datetime
    message_count: int = 0


class NewThread(BaseModel):
    """What a caller gives to create a thread; `id` empty means 'generate one'."""

    id: str = ""
    resource_id: str = ""
    title: str = ""
    metadata: dict[str, Any] = Field(default_factory=dict)


class ThreadUpdate(BaseModel):
    """Fields to change on a thread; None leaves a field as it is."""

    title: str | None = None
    metadata: dict[str, Any] | None = None


class Message(BaseModel):
    id: str
    thread_id: str
    role: Role
    parts: list[Part]
    metadata: dict[str, Any] = Field(default_factory=dict)
    create_time: datetime

    @property
    def text(self) -> str:
        """The message's text parts joined."""
        return "".join(p.text for p in self.parts if isinstance(p, TextPart))


# Builds a page of messages in one validation (stores decode what they read with it: one
# call into pydantic-core per page instead of one per message).
MESSAGE_LIST: TypeAdapter[list[Message]] = TypeAdapter(list[Message])


class NewMessage(BaseModel):
    """A message to append; `id` empty means 'generate one'."""

    id: str = ""
    role: Role
    parts: list[Part]
    metadata: dict[str, Any] = Field(default_factory=dict)


class ThreadPage(BaseModel):
    threads: list[Thread]
    next_page_token: str = ""


class MessagePage(BaseModel):
    messages: list[Message]
    next_page_token: str = ""
