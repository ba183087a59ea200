"""The one place that maps domain errors to gRPC status codes (with rich details)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import grpc
import psycopg
import pydantic
from google.protobuf import any_pb2
from google.protobuf.message import Message
from google.rpc import code_pb2, error_details_pb2, status_pb2
from grpc_status import rpc_status
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError
from temporalio.client import WorkflowUpdateFailedError
from temporalio.exceptions import ApplicationError

from loomwork.errors import (
    Aborted,
    AlreadyExists,
    DeadlineExceeded,
    FailedPrecondition,
    FieldViolation,
    InvalidArgument,
    LoomworkError,
    NotFound,
    OutOfRange,
    PermissionDenied,
    QuotaExceeded,
    ResourceExhausted,
    Unauthenticated,
    Unavailable,
    rejection_error,
)

_CODES: dict[type[LoomworkError], grpc.StatusCode] = {
    InvalidArgument: grpc.StatusCode.INVALID_ARGUMENT,
    NotFound: grpc.StatusCode.NOT_FOUND,
    AlreadyExists: grpc.StatusCode.ALREADY_EXISTS,
    FailedPrecondition: grpc.StatusCode.FAILED_PRECONDITION,
    Aborted: grpc.StatusCode.ABORTED,
    PermissionDenied: grpc.StatusCode.PERMISSION_DENIED,
    Unauthenticated: grpc.StatusCode.UNAUTHENTICATED,
    ResourceExhausted: grpc.StatusCode.RESOURCE_EXHAUSTED,
    Unavailable: grpc.StatusCode.UNAVAILABLE,
    OutOfRange: grpc.StatusCode.OUT_OF_RANGE,
    DeadlineExceeded: grpc.StatusCode.DEADLINE_EXCEEDED,
}


# What the Redis and Postgres clients raise when their server cannot be reached (or gave up
# on a call): the domain converts these where it knows what it was doing (the run event log);
# any that reach a servicer untouched still mean "try again", never INTERNAL.
_UNREACHABLE = {
    RedisConnectionError: "Redis",
    RedisTimeoutError: "Redis",
    psycopg.OperationalError: "PostgreSQL",  # also psycopg_pool's PoolTimeout
}


def unreachable_dependency(error: Exception) -> Unavailable | None:
    """Unavailable for an error that says Redis or PostgreSQL cannot be reached now."""
    for cls, name in _UNREACHABLE.items():
        if isinstance(error, cls):
            return Unavailable(f"{name} is unreachable right now; try again ({error})")
    return None


def status_code_of(error: LoomworkError) -> grpc.StatusCode:
    for cls in type(error).__mro__:
        if cls in _CODES:
            return _CODES[cls]
    return grpc.StatusCode.INTERNAL


def update_rejection(error: WorkflowUpdateFailedError) -> LoomworkError:
    """The domain error of a Temporal Update a workflow rejected (its validator or handler
    raised an ApplicationError whose type names the error)."""
    cause = error.cause
    if isinstance(cause, ApplicationError):
        return rejection_error(cause.type, cause.message, cause.details)
    return FailedPrecondition(getattr(cause, "message", None) or str(cause or error))


def pydantic_violations(error: pydantic.ValidationError) -> list[FieldViolation]:
    """Field paths like `messages[0].parts[1].text` from a pydantic error."""
    violations = []
    for item in error.errors():
        path = ""
        for loc in item["loc"]:
            path += f"[{loc}]" if isinstance(loc, int) else (f".{loc}" if path else str(loc))
        violations.append(FieldViolation(path or "request", item["msg"]))
    return violations


def quota_details(error: QuotaExceeded) -> list[Message]:
    """What a refused start carries beside its message: the quota (google.rpc.QuotaFailure),
    its figures and reset time (ErrorInfo, reason QUOTA_EXCEEDED), and when to try again
    (RetryInfo) when the quota resets at a time."""
    metadata = {"quota": error.quota, "limit": str(error.limit), "used": str(error.used)}
    details: list[Message] = [
        error_details_pb2.QuotaFailure(
            violations=[
                error_details_pb2.QuotaFailure.Violation(
                    subject=f"tenant:{error.tenant}", description=error.message
                )
            ]
        )
    ]
    if error.reset_time is not None:
        metadata["reset_time"] = error.reset_time.isoformat().replace("+00:00", "Z")
        retry = error_details_pb2.RetryInfo()
        wait = max(error.reset_time - datetime.now(UTC), timedelta(0))
        retry.retry_delay.FromTimedelta(wait)
        details.append(retry)
    details.append(
        error_details_pb2.ErrorInfo(reason="QUOTA_EXCEEDED", domain="loomwork", metadata=metadata)
    )
    return details


def to_rpc_status(error: LoomworkError) -> grpc.Status:
    """A grpc.Status carrying google.rpc.Status, with BadRequest details for bad input and
    the quota's details for a refused start."""
    code = status_code_of(error)
    status = status_pb2.Status(code=getattr(code_pb2, code.name), message=error.message)
    if isinstance(error, QuotaExceeded):
        for item in quota_details(error):
            detail = any_pb2.Any()
            detail.Pack(item)
            status.details.append(detail)
    if isinstance(error, InvalidArgument):
        bad_request = error_details_pb2.BadRequest(
            field_violations=[
                error_details_pb2.BadRequest.FieldViolation(
                    field=v.field, description=v.description
                )
                for v in error.violations
            ]
        )
        detail = any_pb2.Any()
        detail.Pack(bad_request)
        status.details.append(detail)
    return rpc_status.to_status(status)
