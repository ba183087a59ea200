"""Protobuf well-known types (Struct, Timestamp) <-> plain Python values, for every converter."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from google.protobuf import json_format, struct_pb2, timestamp_pb2

from loomwork.errors import InvalidArgument


def struct_to_dict(value: struct_pb2.Struct) -> dict[str, Any]:
    return json_format.MessageToDict(value)


def dict_to_struct(value: dict[str, Any]) -> struct_pb2.Struct:
    out = struct_pb2.Struct()
    out.update(value)
    return out


def set_timestamp(target: timestamp_pb2.Timestamp, value: datetime) -> None:
    """Faster than Timestamp.FromDatetime for the aware datetimes storage returns."""
    seconds = value.timestamp()
    target.seconds = int(seconds // 1)
    target.nanos = value.microsecond * 1000


def timestamp_to_datetime(value: timestamp_pb2.Timestamp, field: str) -> datetime:
    """An aware UTC datetime; INVALID_ARGUMENT naming `field` outside years 1..9999."""
    try:
        return value.ToDatetime(tzinfo=UTC)
    except (ValueError, OverflowError) as exc:
        raise InvalidArgument.field(field, "is not a valid timestamp (years 1..9999)") from exc
