"""Every domain error maps to one gRPC status, in one place."""

from __future__ import annotations

import grpc
import psycopg
import pytest
import redis
from google.rpc import error_details_pb2, status_pb2
from psycopg_pool import PoolTimeout

from loomwork import errors
from loomwork.llm.errors import ModelRateLimited, ModelRequestRejected, ModelUnavailable
from loomwork.streams.errors import FollowIdle, OutOfRange
from server.transport.errors import status_code_of, to_rpc_status, unreachable_dependency


@pytest.mark.parametrize(
    ("error", "code"),
    [
        (errors.InvalidArgument.field("x", "bad"), grpc.StatusCode.INVALID_ARGUMENT),
        (errors.NotFound("gone"), grpc.StatusCode.NOT_FOUND),
        (errors.AlreadyExists("taken"), grpc.StatusCode.ALREADY_EXISTS),
        (errors.FailedPrecondition("no"), grpc.StatusCode.FAILED_PRECONDITION),
        (errors.PermissionDenied("no"), grpc.StatusCode.PERMISSION_DENIED),
        (errors.Unauthenticated("who"), grpc.StatusCode.UNAUTHENTICATED),
        (errors.ResourceExhausted("full"), grpc.StatusCode.RESOURCE_EXHAUSTED),
        (errors.Unavailable("down"), grpc.StatusCode.UNAVAILABLE),
        (OutOfRange("run", 9, 3), grpc.StatusCode.OUT_OF_RANGE),
        (FollowIdle("run", 3, 1.0), grpc.StatusCode.DEADLINE_EXCEEDED),
        (
            ModelRateLimited("slow down", status=429, retryable=True),
            grpc.StatusCode.RESOURCE_EXHAUSTED,
        ),
        (ModelUnavailable("503", status=503, retryable=True), grpc.StatusCode.UNAVAILABLE),
        (
            ModelRequestRejected("bad", status=400, retryable=False),
            grpc.StatusCode.FAILED_PRECONDITION,
        ),
    ],
)
def test_domain_error_maps_to_its_status(error: errors.LoomworkError, code) -> None:
    assert status_code_of(error) == code
    status = to_rpc_status(error)
    assert status.code == code
    assert error.message in status.details


@pytest.mark.parametrize(
    "error",
    [
        redis.ConnectionError("Error 111 connecting to 127.0.0.1:6379"),
        redis.TimeoutError("Timeout reading from socket"),
        psycopg.OperationalError("connection is lost"),
        PoolTimeout("couldn't get a connection after 30.00 sec"),
    ],
)
def test_an_unreachable_redis_or_postgres_is_unavailable(error: Exception) -> None:
    unavailable = unreachable_dependency(error)
    assert unavailable is not None
    assert status_code_of(unavailable) == grpc.StatusCode.UNAVAILABLE
    assert str(error) in unavailable.message


def test_other_errors_are_not_taken_for_an_outage() -> None:
    assert unreachable_dependency(ValueError("bug")) is None
    assert unreachable_dependency(redis.ResponseError("WRONGTYPE")) is None
    assert unreachable_dependency(psycopg.errors.UniqueViolation("dup")) is None


def test_invalid_argument_carries_bad_request_field_violations() -> None:
    error = errors.InvalidArgument(
        [errors.FieldViolation("a.b", "is required"), errors.FieldViolation("c[0]", "too long")]
    )
    status = to_rpc_status(error)
    ((key, raw),) = status.trailing_metadata
    assert key == "grpc-status-details-bin"
    detail = status_pb2.Status.FromString(raw).details[0]
    bad = error_details_pb2.BadRequest()
    assert detail.Unpack(bad)
    assert [(v.field, v.description) for v in bad.field_violations] == [
        ("a.b", "is required"),
        ("c[0]", "too long"),
    ]
