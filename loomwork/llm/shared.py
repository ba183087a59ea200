"""Chat models for any model name over one HTTP client (and its kept-alive connections)."""

from __future__ import annotations

import asyncio

import openai

from loomwork.llm.chat import NO_KEY, ChatModel
from loomwork.llm.errors import ModelRequestRejected

NO_MODEL_CONFIGURED = (
    "no model is configured: set OPENAI_API_KEY (OpenAI) or OPENAI_BASE_URL (any "
    "OpenAI-compatible endpoint), or run in demo mode (`loomwork up --demo` or "
    "LOOMWORK_DEMO=true) for the offline demo model"
)


class SharedChatModels:
    """`ChatModel`s for any model name over one `openai` client created on first use, so
    agent steps, RAG answers and reranking reuse kept-alive connections instead of paying
    for a new client (~30 ms, its TLS context) on every model call. The client's
    own retries are off (Temporal retries); cancelling a call still aborts its request.
    With neither a base URL nor a key there is no model: asking for one fails at once
    (not retryable) saying what to set, rather than calling OpenAI with no key."""

    def __init__(
        self,
        *,
        base_url: str | None,
        api_key: str | None,
        timeout: float = 120.0,
        max_calls: int = 0,
    ) -> None:
        self.base_url = base_url
        self.api_key = api_key
        self.timeout = timeout
        # At most `max_calls` model calls in flight at once (0: no bound); the rest wait.
        self.slots = asyncio.Semaphore(max_calls) if max_calls > 0 else None
        self._client: openai.AsyncOpenAI | None = None

    def __call__(self, model: str) -> ChatModel:
        if not (self.base_url or self.api_key):
            raise ModelRequestRejected(
                NO_MODEL_CONFIGURED, retryable=False, code="model_not_configured"
            )
        if self._client is None:
            self._client = openai.AsyncOpenAI(
                base_url=self.base_url or None,
                api_key=self.api_key or NO_KEY,
                timeout=self.timeout,
                max_retries=0,
            )
        return ChatModel(model, client=self._client, slots=self.slots)

    async def aclose(self) -> None:
        if self._client is not None:
            await self._client.close()
            self._client = None
