"""How a workflow reads why an activity or a child failed, or that it was canceled."""

from __future__ import annotations

import asyncio

from temporalio.exceptions import ActivityError, ApplicationError, CancelledError


def failure_cause(error: BaseException) -> tuple[str, str]:
    """The message and type of what made an activity fail (its ApplicationError's)."""
    while isinstance(error, ActivityError) and error.cause is not None:
        error = error.cause
    if isinstance(error, ApplicationError):
        return error.message, error.type or "ApplicationError"
    return str(error), type(error).__name__


def is_cancellation(error: BaseException) -> bool:
    """Whether the error says the run (or the activity) was canceled."""
    return isinstance(error, asyncio.CancelledError | CancelledError) or (
        isinstance(error, ActivityError) and isinstance(error.cause, CancelledError)
    )
