"""Errors of calls to a model, in the domain family, each saying whether a retry may help.

`ModelError.retryable` is what the activity layer turns into Temporal's retry
decision (`non_retryable=not retryable`, next delay from `retry_after`). The
subclasses also inherit the domain error that decides the gRPC status when such
an error reaches a caller:

- 429 -> `ModelRateLimited` (retryable; a ResourceExhausted),
- 408, 409, 5xx, timeouts, connection errors, a broken stream -> `ModelUnavailable`
  (retryable; an Unavailable),
- 400, 401, 403, 404, 422 and other 4xx -> `ModelRequestRejected` (not retryable;
  a FailedPrecondition), carrying the endpoint's own message.
"""

from __future__ import annotations

import email.utils
import math
import time
from collections.abc import Mapping
from typing import Any

import httpx2
import openai

from loomwork.errors import FailedPrecondition, LoomworkError, ResourceExhausted, Unavailable

__all__ = [
    "ModelError",
    "ModelRateLimited",
    "ModelRequestRejected",
    "ModelUnavailable",
    "is_transport_error",
    "model_error_from",
    "parse_retry_after",
]

MAX_RETRY_AFTER = 600.0


class ModelError(LoomworkError):
    """A model call failed; `retryable` says whether trying again later may succeed."""

    def __init__(
        self,
        message: str,
        *,
        retryable: bool,
        status: int | None = None,
        retry_after: float | None = None,
        code: str | None = None,
    ) -> None:
        super().__init__(message)
        self.retryable = retryable
        self.status = status
        self.retry_after = retry_after
        self.code = code
        # The model the step goes on with if this error ends its retries ("" when none is
        # left, or it is not retryable): set by the agent's step, which knows its models.
        self.fallback_model = ""

    def __reduce__(self) -> tuple[Any, ...]:
        return (
            _rebuild,
            (type(self), self.message, self.retryable, self.status, self.retry_after, self.code),
            {"fallback_model": self.fallback_model},
        )

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}({self.message!r}, retryable={self.retryable}, "
            f"status={self.status}, retry_after={self.retry_after})"
        )


def _rebuild(
    cls: type[ModelError],
    message: str,
    retryable: bool,
    status: int | None,
    retry_after: float | None,
    code: str | None,
) -> ModelError:
    return cls(message, retryable=retryable, status=status, retry_after=retry_after, code=code)


class ModelRateLimited(ModelError, ResourceExhausted):
    """The model endpoint said 429: retry, after `retry_after` seconds when given."""


class ModelUnavailable(ModelError, Unavailable):
    """The model endpoint failed or could not be reached: retry."""


class ModelRequestRejected(ModelError, FailedPrecondition):
    """The model endpoint refused the request (bad request, auth, unknown model): do not retry."""


def parse_retry_after(headers: Mapping[str, str] | None) -> float | None:
    """Seconds to wait from `retry-after-ms` / `retry-after` (seconds or an HTTP date)."""
    if not headers:
        return None
    lower = {k.lower(): v for k, v in headers.items()}
    for name, divisor in (("retry-after-ms", 1000.0), ("retry-after", 1.0)):
        raw = lower.get(name)
        if raw is None:
            continue
        try:
            seconds = float(raw) / divisor
        except ValueError:
            if name != "retry-after":
                continue
            parsed = email.utils.parsedate_tz(raw)
            if parsed is None:
                continue
            seconds = email.utils.mktime_tz(parsed) - time.time()
        if math.isfinite(seconds):
            return min(max(seconds, 0.0), MAX_RETRY_AFTER)
    return None


def _status_message(exc: openai.APIStatusError) -> str:
    body = exc.body
    message: Any = None
    if isinstance(body, Mapping):
        message = body.get("message")
    if not isinstance(message, str) or not message:
        message = exc.message
    return f"model endpoint answered {exc.status_code}: {message}"


def model_error_from(exc: BaseException) -> ModelError:
    """The `ModelError` for an exception raised while calling a model."""
    if isinstance(exc, ModelError):
        return exc
    if isinstance(exc, openai.APIStatusError):
        status = exc.status_code
        code = getattr(exc, "code", None)
        code = code if isinstance(code, str) else None
        message = _status_message(exc)
        retry_after = parse_retry_after(exc.response.headers)
        if status == 429:
            return ModelRateLimited(
                message, retryable=True, status=status, retry_after=retry_after, code=code
            )
        if status >= 500 or status in (408, 409):
            return ModelUnavailable(
                message, retryable=True, status=status, retry_after=retry_after, code=code
            )
        return ModelRequestRejected(message, retryable=False, status=status, code=code)
    if isinstance(exc, openai.APITimeoutError):
        return ModelUnavailable("model endpoint timed out", retryable=True)
    if isinstance(exc, openai.APIConnectionError):
        cause = exc.__cause__ or exc.__context__
        detail = f": {cause}" if cause else ""
        return ModelUnavailable(f"model endpoint unreachable{detail}", retryable=True)
    if isinstance(exc, openai.APIError):
        # An error event inside an SSE stream: the endpoint failed mid-answer.
        return ModelUnavailable(f"model stream failed: {exc.message}", retryable=True)
    if isinstance(exc, openai.OpenAIError):
        # Raised before any request was sent (e.g. no API key): configuration, not luck.
        return ModelRequestRejected(f"model client error: {exc}", retryable=False)
    if isinstance(exc, TimeoutError):
        return ModelUnavailable("model call timed out", retryable=True)
    if isinstance(exc, OSError) or is_transport_error(exc):
        return ModelUnavailable(f"model connection failed: {exc!r}", retryable=True)
    return ModelUnavailable(f"model call failed: {exc!r}", retryable=True)


def is_transport_error(exc: BaseException) -> bool:
    """An HTTP transport error of the model client's `httpx2` escaping a stream read."""
    return isinstance(exc, httpx2.TransportError | httpx2.StreamError)
