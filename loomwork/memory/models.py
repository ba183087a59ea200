"""Pydantic models of what memory does with messages: semantic recall, indexing and
working memory."""

from __future__ import annotations

from datetime import datetime
from enum import StrEnum
from typing import Any

from pydantic import BaseModel, Field

from loomwork.messages import Message


class RecallScope(StrEnum):
    THREAD = "thread"
    RESOURCE = "resource"


class RecallQuery(BaseModel):
    """A semantic search over a thread's or a resource's messages."""

    query: str
    scope: RecallScope
    thread_id: str = ""
    resource_id: str = ""
    top_k: int = 5
    message_range: int = 0
    min_score: float = 0.0


class RecallHit(BaseModel):
    message: Message
    score: float
    context: list[Message] = Field(default_factory=list)


class MessagesToIndex(BaseModel):
    """Stored messages whose embeddings should be (re)computed."""

    tenant: str
    thread_id: str
    message_ids: list[str]


class WorkingMemory(BaseModel):
    """Facts an agent keeps about a thread or a resource: markdown, or structured data.

    `etag` names the stored version ("0": never written); a replacement that carries one
    applies only to that version."""

    scope: RecallScope
    thread_id: str = ""
    resource_id: str = ""
    markdown: str = ""
    data: dict[str, Any] | None = None
    update_time: datetime | None = None
    etag: str = ""
