"""What a failed call carries: the rich `google.rpc.Status` and its BadRequest field violations."""

from __future__ import annotations

import grpc
from google.rpc import error_details_pb2, status_pb2

__all__ = ["error_details", "rich_status"]

DETAILS_KEY = "grpc-status-details-bin"


def rich_status(err: grpc.RpcError) -> status_pb2.Status | None:
    """The `google.rpc.Status` a server attached to an error (`grpc-status-details-bin`), if any.

    Works for `grpc.aio.AioRpcError` and for sync `grpc.Call` errors alike.
    """
    trailing = getattr(err, "trailing_metadata", None)
    metadata = trailing() if callable(trailing) else None
    for key, value in metadata or ():
        if key == DETAILS_KEY and isinstance(value, bytes):
            try:
                return status_pb2.Status.FromString(value)
            except Exception:  # a malformed trailer is "no details", not a new error
                return None
    return None


def error_details(err: grpc.RpcError) -> list[tuple[str, str]]:
    """`(field, description)` of each google.rpc.BadRequest field violation of an error.

    Empty when the error carries no BadRequest details (e.g. NOT_FOUND, or a connection error).
    """
    status = rich_status(err)
    if status is None:
        return []
    violations: list[tuple[str, str]] = []
    for detail in status.details:
        if detail.Is(error_details_pb2.BadRequest.DESCRIPTOR):
            bad_request = error_details_pb2.BadRequest()
            detail.Unpack(bad_request)
            violations.extend((v.field, v.description) for v in bad_request.field_violations)
    return violations
