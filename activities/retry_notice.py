"""What a failed attempt of an activity can say of the next one, before Temporal retries it:
whether there is one (by the activity's retry policy and the error), and how long until it
starts (the error's own next delay, else the policy's backoff), as Temporal computes them."""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime, timedelta

from temporalio import activity
from temporalio.common import RetryPolicy
from temporalio.exceptions import ApplicationError

from loomwork.retries import RetryNotice

log = logging.getLogger(__name__)

_DEFAULT_POLICY = RetryPolicy()  # Temporal's, for an activity scheduled without one


def policy_backoff(policy: RetryPolicy, failed_attempt: int) -> timedelta:
    """The wait after attempt `failed_attempt` fails: the initial interval grown by the
    coefficient per attempt, capped by the maximum interval (100 × initial when unset)."""
    initial = policy.initial_interval
    cap = policy.maximum_interval or initial * 100
    grown = initial.total_seconds() * policy.backoff_coefficient ** (failed_attempt - 1)
    return min(timedelta(seconds=grown), cap)


def next_attempt(error: BaseException) -> RetryNotice | None:
    """The attempt Temporal starts after this one fails with `error`, or None when it will
    not retry (a non-retryable error, the last attempt, or past the schedule-to-close
    deadline). Call it in the activity, as the attempt fails."""
    info = activity.info()
    policy = info.retry_policy or _DEFAULT_POLICY
    application = error if isinstance(error, ApplicationError) else None
    error_type = (application.type if application else None) or type(error).__name__
    if application is not None and application.non_retryable:
        return None
    if error_type in (policy.non_retryable_error_types or ()):
        return None
    if policy.maximum_attempts and info.attempt >= policy.maximum_attempts:
        return None
    backoff = (application.next_retry_delay if application else None) or policy_backoff(
        policy, info.attempt
    )
    if info.schedule_to_close_timeout:
        deadline = info.scheduled_time + info.schedule_to_close_timeout
        if datetime.now(UTC) + backoff >= deadline:
            return None
    message = application.message if application else str(error)
    return RetryNotice(
        attempt=info.attempt + 1, error_type=error_type, message=message, backoff=backoff
    )


async def announce_fallback(
    error: ApplicationError, model: str, say: Callable[[RetryNotice], Awaitable[object]]
) -> None:
    """`say` that the step goes on with `model` (its model's last attempt failed with
    `error`): readers drop what the attempt streamed, as for a retry. Best effort."""
    info = activity.info()
    notice = RetryNotice(
        attempt=info.attempt + 1,
        error_type=error.type or "ApplicationError",
        message=f"{error.message}; going on with model {model}",
        backoff=timedelta(0),
    )
    try:
        await say(notice)
    except Exception as problem:  # never in place of the attempt's own error
        log.warning("could not announce the fallback to %s: %s", model, problem)


async def announce_retry(
    error: BaseException, say: Callable[[RetryNotice], Awaitable[object]]
) -> None:
    """`say` the retry that follows `error`, if Temporal will retry; best effort: a notice
    that cannot be given is logged (the next attempt says the step is retried anyway)."""
    notice = next_attempt(error)
    if notice is None:
        return
    try:
        await say(notice)
    except Exception as problem:  # never in place of the attempt's own error
        log.warning("could not announce attempt %d: %s", notice.attempt, problem)
