"""Retry policies the workflows share."""

from collections.abc import Iterable
from datetime import timedelta

from temporalio import workflow
from temporalio.common import RetryPolicy

with workflow.unsafe.imports_passed_through():
    from loomwork.retries import RetryPolicy as DomainRetryPolicy

# A model call: 429s, 5xx and timeouts back off (an error carrying Retry-After sets the next
# delay itself); a request the model rejected, an unknown model or bad input is not retried.
MODEL_CALL = RetryPolicy(
    initial_interval=timedelta(seconds=1),
    backoff_coefficient=2.0,
    maximum_interval=timedelta(seconds=30),
    maximum_attempts=6,
    non_retryable_error_types=["ModelRequestRejected", "NotFound", "InvalidArgument"],
)


def temporal_retry_policy(
    policy: DomainRetryPolicy, *, never_retried: Iterable[str] = ()
) -> RetryPolicy:
    """Temporal's retry policy for a step's or a tool's policy; `never_retried` adds error
    types that are never retried whatever the policy says."""
    return RetryPolicy(
        maximum_attempts=policy.max_attempts,
        initial_interval=policy.initial_interval,
        backoff_coefficient=policy.backoff_coefficient,
        maximum_interval=policy.maximum_interval,
        non_retryable_error_types=[*policy.non_retryable_error_types, *never_retried],
    )
