"""Embeddings from any OpenAI-compatible `/v1/embeddings` endpoint, through the `openai` client."""

from __future__ import annotations

import os
from typing import Any

import numpy as np
import openai

from loomwork.embeddings.provider import l2_normalize, validate_texts
from loomwork.errors import FailedPrecondition, InvalidArgument, Unavailable

#: Dimensions of OpenAI's own models, so `dimension` is known before the first call.
KNOWN_DIMENSIONS = {
    "text-embedding-3-small": 1536,
    "text-embedding-3-large": 3072,
    "text-embedding-ada-002": 1536,
}


def _server_message(exc: openai.APIStatusError) -> str:
    """The endpoint's own error text (`{"error": {"message": ...}}`), else the client's."""
    body = exc.body
    if isinstance(body, dict):
        message = body.get("message")
        if isinstance(message, str) and message:
            return message
    if isinstance(body, str) and body:
        return body
    return exc.message


def map_openai_error(exc: Exception, *, model: str) -> Exception:
    """The domain error for an `openai` exception (retryable ones become Unavailable)."""
    if isinstance(exc, openai.APIConnectionError):  # includes APITimeoutError
        return Unavailable(f"embedding endpoint unreachable ({model}): {exc.message}")
    if isinstance(exc, openai.APIStatusError):
        status = exc.status_code
        detail = f"embedding endpoint answered {status} ({model}): {_server_message(exc)}"
        if status in (408, 409, 429) or status >= 500:
            return Unavailable(detail)
        if status in (400, 413, 422):
            return InvalidArgument.field("texts", detail)
        return FailedPrecondition(detail)  # 401, 403, 404 and other 4xx: misconfiguration
    if isinstance(exc, openai.OpenAIError):
        return FailedPrecondition(f"embedding endpoint ({model}): {exc}")
    return exc


class OpenAIEmbeddings:
    """An `EmbeddingProvider` over an OpenAI-compatible endpoint.

    The client never retries by itself (`max_retries=0`): a failed batch
    raises Unavailable and Temporal retries the activity with its policy.
    `dimension` is the given one, else the known one for OpenAI's models,
    else learned from the first response; `send_dimensions` passes it to the
    endpoint as `dimensions` (text-embedding-3 models can shorten vectors).
    """

    def __init__(
        self,
        model: str,
        dimension: int | None = None,
        base_url: str | None = None,
        api_key: str | None = None,
        batch_size: int = 256,
        *,
        timeout: float = 60.0,
        send_dimensions: bool = False,
    ) -> None:
        if not model:
            raise InvalidArgument.field("model", "must not be empty")
        if batch_size < 1 or batch_size > 2048:
            raise InvalidArgument.field("batch_size", "must be between 1 and 2048")
        if dimension is not None and dimension < 1:
            raise InvalidArgument.field("dimension", "must be positive")
        if send_dimensions and dimension is None:
            raise InvalidArgument.field("dimension", "is required with send_dimensions")
        self.model = model
        self.batch_size = batch_size
        self.send_dimensions = send_dimensions
        self._dimension = dimension or KNOWN_DIMENSIONS.get(model)
        base_url = base_url or os.environ.get("OPENAI_BASE_URL") or None
        api_key = api_key or os.environ.get("OPENAI_API_KEY") or None
        if api_key is None:
            if base_url is None:
                raise FailedPrecondition(
                    f"embedding model {model!r} needs OPENAI_API_KEY "
                    "(or OPENAI_BASE_URL for a local endpoint without keys)"
                )
            api_key = "unused"  # local OpenAI-compatible servers often take no key
        try:
            self._client = openai.AsyncOpenAI(
                api_key=api_key, base_url=base_url, max_retries=0, timeout=timeout
            )
        except openai.OpenAIError as exc:
            raise FailedPrecondition(f"embedding client for {model!r}: {exc}") from exc

    @property
    def dimension(self) -> int:
        if self._dimension is None:
            raise FailedPrecondition(
                f"the dimension of embedding model {self.model!r} is known only after its "
                "first embedding; pass dimension= or call embed() first"
            )
        return self._dimension

    async def embed(self, texts: list[str]) -> list[list[float]]:
        validate_texts(texts)
        vectors: list[list[float]] = []
        for start in range(0, len(texts), self.batch_size):
            vectors.extend(await self._embed_batch(list(texts[start : start + self.batch_size])))
        return vectors

    async def _embed_batch(self, batch: list[str]) -> list[list[float]]:
        extra: dict[str, Any] = {}
        if self.send_dimensions and self._dimension is not None:
            extra["dimensions"] = self._dimension
        try:
            response = await self._client.embeddings.create(model=self.model, input=batch, **extra)
        except openai.OpenAIError as exc:
            raise map_openai_error(exc, model=self.model) from exc
        except ValueError as exc:  # the client's parser: e.g. "No embedding data received"
            raise FailedPrecondition(
                f"embedding endpoint ({self.model}) sent an unusable answer: {exc}"
            ) from exc
        items = sorted(response.data, key=lambda item: item.index)
        if len(items) != len(batch) or [item.index for item in items] != list(range(len(batch))):
            raise FailedPrecondition(
                f"embedding endpoint ({self.model}) returned {len(items)} embeddings "
                f"for {len(batch)} inputs"
            )
        try:
            matrix = np.asarray([item.embedding for item in items], dtype=np.float32)
        except ValueError as exc:  # ragged rows
            raise FailedPrecondition(
                f"embedding endpoint ({self.model}) returned vectors of different lengths"
            ) from exc
        if matrix.ndim != 2 or matrix.shape[1] == 0:
            raise FailedPrecondition(f"embedding endpoint ({self.model}) returned empty vectors")
        if self._dimension is None:
            self._dimension = int(matrix.shape[1])
        elif matrix.shape[1] != self._dimension:
            raise FailedPrecondition(
                f"embedding model {self.model!r} returned {matrix.shape[1]}-dim vectors, "
                f"expected {self._dimension}"
            )
        result: list[list[float]] = l2_normalize(matrix).tolist()
        return result

    async def close(self) -> None:
        await self._client.close()
