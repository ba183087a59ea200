"""Protobuf well-known types (Struct, Timestamp) <-> plain Python values, for every converter."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from google.protobuf import json_format, struct_pb2, timestamp_pb2


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
