"""Retry policies the workflows share."""

from datetime import timedelta

from temporalio.common import RetryPolicy

# A model call: 429s, 5xx and timeouts back off (an error carrying Retry-After sets the next
# delay itself); a request the model rejected, an unknown model or bad input is not retried.
MODEL_CALL = RetryPolicy(
    initial_interval=timedelta(seconds=1),
    backoff_coefficient=2.0,
    maximum_interval=timedelta(seconds=30),
    maximum_attempts=6,
    non_retryable_error_types=["ModelRequestRejected", "NotFound", "InvalidArgument"],
)
