"""Retry policies as the domain states them; workflows turn them into Temporal's."""

from __future__ import annotations

from datetime import timedelta

from pydantic import BaseModel, ConfigDict, Field


class RetryPolicy(BaseModel):
    """How a step's or a tool's activity is retried (a Temporal retry policy), and how long
    one attempt may take."""

    model_config = ConfigDict(frozen=True)

    max_attempts: int = Field(default=3, ge=0, description="0 means unlimited (until timeout)")
    initial_interval: timedelta = timedelta(seconds=1)
    backoff_coefficient: float = Field(default=2.0, ge=1.0)
    maximum_interval: timedelta = timedelta(seconds=30)
    non_retryable_error_types: tuple[str, ...] = ()
    timeout: timedelta = Field(default=timedelta(minutes=5), description="one attempt's limit")


# The error type of a retry whose failed attempt said nothing of it: the next attempt says
# the step is retried, with this message.
ATTEMPT_LOST = "AttemptLost"
ATTEMPT_LOST_MESSAGE = (
    "the previous attempt ended without saying why: its worker stopped, it timed out, or it"
    " could not reach the event log"
)
#: The error type of work handed back by a worker that shuts down (retried elsewhere).
WORKER_SHUTDOWN = "WorkerShutdown"
# What the failure of an attempt that is tried again means to a caller: a google.rpc code
# and a reason (step_retrying, an answer's retrying).
_RETRIED_FAILURES = {
    "ModelRateLimited": (8, "MODEL_RATE_LIMITED"),
    "ModelUnavailable": (14, "MODEL_UNAVAILABLE"),
    "ResourceExhausted": (8, "RESOURCE_EXHAUSTED"),
    "Unavailable": (14, "UNAVAILABLE"),
    WORKER_SHUTDOWN: (14, "WORKER_SHUTDOWN"),
    ATTEMPT_LOST: (14, "ATTEMPT_LOST"),
}


def retried_failure(error_type: str) -> tuple[int, str]:
    """The google.rpc code and reason of an attempt's failure (of that error type) that is
    tried again."""
    return _RETRIED_FAILURES.get(error_type, (13, "ATTEMPT_FAILED"))


class RetryNotice(BaseModel):
    """What a failed attempt of a step says of the next one: its number, what failed (the
    error's type and message) and how long until it starts."""

    model_config = ConfigDict(frozen=True)

    attempt: int
    error_type: str
    message: str
    backoff: timedelta
