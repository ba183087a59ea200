"""Retry policies the workflows share.

An outage of Redis or Postgres must delay a run, never fail it. Each attempt of a step waits
for Redis up to `RunEventLog.write_patience` (20 s) before it fails with Unavailable, and the
policies below retry for longer than an outage of minutes: bookkeeping (publishing a run's
events, saving its end) with no attempt limit for `OUTAGE_PATIENCE`, a model call for about
6 minutes of Redis outage, the steps of ingestions and answers about as long.
"""

from collections.abc import Iterable
from datetime import timedelta

from temporalio import workflow
from temporalio.common import RetryPolicy

with workflow.unsafe.imports_passed_through():
    from loomwork.retries import RetryPolicy as DomainRetryPolicy

# A model step heartbeats every second while it runs (tokens or not: a model may think for a
# while before its first token). A worker that dies stops: the step is retried on another
# worker once this much passes without a heartbeat, so a run recovers in seconds.
MODEL_HEARTBEAT_TIMEOUT = timedelta(seconds=4)

# A model call: 429s, 5xx and timeouts back off (an error carrying Retry-After sets the next
# delay itself); a request the model rejected, an unknown model or bad input is not retried.
# Ten attempts: a failing model fails the run after ~2.5 min of backoff; attempts that wait out
# Redis (20 s each) stretch that to ~6 min.
MODEL_CALL = RetryPolicy(
    initial_interval=timedelta(seconds=1),
    backoff_coefficient=2.0,
    maximum_interval=timedelta(seconds=30),
    maximum_attempts=10,
    non_retryable_error_types=["ModelRequestRejected", "NotFound", "InvalidArgument"],
)

#: How long a step's activity may go without a heartbeat (each heartbeats every second while
#: it runs): an attempt whose worker died, or whose completion never reached Temporal (it was
#: down as the attempt ended), is retried this long after its last heartbeat rather than
#: after its whole timeout. A step function must not block its worker's event loop this long.
STEP_HEARTBEAT_TIMEOUT = timedelta(seconds=10)

#: The same for the background activities that route a webhook and index messages for
#: recall: a worker killed mid-attempt delays them this long, not their whole timeout.
BACKGROUND_HEARTBEAT_TIMEOUT = timedelta(seconds=10)

#: An agent's tool call heartbeats every second too; a worker that dies mid-call is noticed
#: this long after its last heartbeat (5 s proved short under heavy load: calls were retried
#: while their first attempt still ran, kept to one effect only by the idempotency key).
TOOL_HEARTBEAT_TIMEOUT = timedelta(seconds=10)

#: How long bookkeeping is retried (its schedule-to-close timeout) before the run gives up.
OUTAGE_PATIENCE = timedelta(minutes=15)


def bookkeeping_retries(never_retried: Iterable[str] = ()) -> RetryPolicy:
    """Publishing a run's events and saving its end: short steps whose failures are the
    infrastructure's. No attempt limit, backing off to one try every 10 s; the step's
    schedule-to-close timeout (`OUTAGE_PATIENCE`) bounds them, so the run's end is published
    once Redis is back. `never_retried`: error types that fail at once."""
    return RetryPolicy(
        initial_interval=timedelta(milliseconds=200),
        backoff_coefficient=2.0,
        maximum_interval=timedelta(seconds=10),
        maximum_attempts=0,
        non_retryable_error_types=list(never_retried),
    )


BOOKKEEPING = bookkeeping_retries()


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
