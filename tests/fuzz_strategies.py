"""Hypothesis strategies for any protobuf message, built from its descriptor.

Every field may be left unset or get a hostile or plausible value of its type: strings
with NUL characters, very long ones and ids that exist (the `pool`, both tenants'
resources, so requests reach the code behind the checks); integers at the edges of their
range; NaN and ±Infinity; enum numbers the proto does not define; JSON (Struct, Value,
ListValue) with all of these and nested too deep; oneofs with one member set. Messages
nest a few levels deep (recursive messages stop there).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from google.protobuf import struct_pb2
from google.protobuf.descriptor import Descriptor, FieldDescriptor
from google.protobuf.message import Message
from google.protobuf.message_factory import GetMessageClass
from hypothesis import strategies as st

MAX_DEPTH = 4
_INT_EDGES = {
    FieldDescriptor.TYPE_INT32: (-(2**31), 2**31 - 1),
    FieldDescriptor.TYPE_SINT32: (-(2**31), 2**31 - 1),
    FieldDescriptor.TYPE_SFIXED32: (-(2**31), 2**31 - 1),
    FieldDescriptor.TYPE_INT64: (-(2**63), 2**63 - 1),
    FieldDescriptor.TYPE_SINT64: (-(2**63), 2**63 - 1),
    FieldDescriptor.TYPE_SFIXED64: (-(2**63), 2**63 - 1),
    FieldDescriptor.TYPE_UINT32: (0, 2**32 - 1),
    FieldDescriptor.TYPE_FIXED32: (0, 2**32 - 1),
    FieldDescriptor.TYPE_UINT64: (0, 2**64 - 1),
    FieldDescriptor.TYPE_FIXED64: (0, 2**64 - 1),
}
_SMALL_INTS = (0, 1, -1, 2, 5, 10, 50, 100, 101, 1000, 1001, 4000, 100_000)
_NASTY_TEXT = (
    "",
    " ",
    "\x00",
    "a\x00b",
    "\\u0000",
    "é✓中文🙂",
    "' OR 1=1 --",
    "x' OR WorkflowType = 'DslRun",
    "%_*",
    "../../etc/passwd",
    "metadata.a.b",
    "http://127.0.0.1:1/x",
    "a" * 129,
    "a" * 300,
    "a" * 5_000,
    "a" * 20_000,
)


def json_values(pool: Sequence[str]) -> st.SearchStrategy[Any]:
    """JSON with NaN, ±Infinity, NUL in keys and strings, and (sometimes) deep nesting."""
    scalars = st.one_of(
        st.none(),
        st.booleans(),
        st.floats(allow_nan=True, allow_infinity=True),
        st.integers(-(2**53), 2**53).map(float),
        st.text(max_size=12),
        st.sampled_from([*pool, *_NASTY_TEXT[:12]]),
    )
    keys = st.one_of(st.text(max_size=8), st.sampled_from(["type", "a", "k\x00", ""]))
    nested = st.recursive(
        scalars,
        lambda children: st.one_of(
            st.lists(children, max_size=3), st.dictionaries(keys, children, max_size=3)
        ),
        max_leaves=8,
    )
    deep = st.integers(30, 40).map(_nested_deep)
    return st.one_of(nested, nested, nested, deep)


def _nested_deep(levels: int) -> Any:
    value: Any = "bottom"
    for i in range(levels):
        value = {"n": value} if i % 2 else [value]
    return value


def _json_message(name: str, pool: Sequence[str]) -> st.SearchStrategy[Message]:
    values = json_values(pool)
    if name == "google.protobuf.Struct":
        return st.dictionaries(st.text(max_size=8), values, max_size=4).map(_struct)
    if name == "google.protobuf.ListValue":
        return st.lists(values, max_size=4).map(_list_value)
    return values.map(_value)


def _struct(data: dict[str, Any]) -> struct_pb2.Struct:
    out = struct_pb2.Struct()
    out.update(data)
    return out


def _list_value(items: list[Any]) -> struct_pb2.ListValue:
    out = struct_pb2.ListValue()
    out.extend(items)
    return out


def _value(item: Any) -> struct_pb2.Value:
    holder = struct_pb2.Struct()
    holder.update({"v": item})
    return holder.fields["v"]


class MessageStrategies:
    """Strategies for the messages of one descriptor pool, `pool` the strings worth trying
    (ids and names that exist)."""

    def __init__(self, pool: Sequence[str]) -> None:
        self.pool = list(pool)
        self._cache: dict[tuple[str, int], st.SearchStrategy[Message]] = {}

    def for_message(self, descriptor: Descriptor, depth: int = 0) -> st.SearchStrategy[Message]:
        key = (descriptor.full_name, depth)
        if key not in self._cache:
            self._cache[key] = st.deferred(lambda: self._build(descriptor, depth))
        return self._cache[key]

    def _build(self, descriptor: Descriptor, depth: int) -> st.SearchStrategy[Message]:
        name = descriptor.full_name
        if name in ("google.protobuf.Struct", "google.protobuf.Value", "google.protobuf.ListValue"):
            return _json_message(name, self.pool)
        cls = GetMessageClass(descriptor)
        parts: dict[str, st.SearchStrategy[Any]] = {}
        # Most fields unset: a request with few fields set gets past the checks more often.
        for field in descriptor.fields:
            if field.containing_oneof is None:
                parts[field.name] = st.one_of(st.none(), st.none(), self._field(field, depth))
        for oneof in descriptor.oneofs:
            members = [st.tuples(st.just(f.name), self._value(f, depth)) for f in oneof.fields]
            parts[f"oneof:{oneof.name}"] = st.one_of(st.none(), *members)
        if name == "google.protobuf.FieldMask":
            parts["paths"] = st.lists(self._field_paths(), max_size=3)
        return st.fixed_dictionaries(parts).map(lambda values: _fill(cls(), values))

    def _field_paths(self) -> st.SearchStrategy[str]:
        return st.one_of(
            st.sampled_from(["title", "metadata", "description", "memory.last_messages"]),
            self._strings(),
        )

    def _field(self, field: FieldDescriptor, depth: int) -> st.SearchStrategy[Any]:
        if field.message_type is not None and field.message_type.GetOptions().map_entry:
            key = self._value(field.message_type.fields_by_name["key"], depth)
            value = self._value(field.message_type.fields_by_name["value"], depth)
            return st.dictionaries(key, value, max_size=3)
        if field.is_repeated:
            item = self._value(field, depth)
            few = st.lists(item, max_size=3)
            if depth > 1:
                return few
            many = st.tuples(item, st.sampled_from([33, 129, 1001])).map(lambda p: [p[0]] * p[1])
            return st.one_of(few, few, few, many)
        return self._value(field, depth)

    def _value(self, field: FieldDescriptor, depth: int) -> st.SearchStrategy[Any]:
        kind = field.type
        if kind == FieldDescriptor.TYPE_MESSAGE:
            if depth >= MAX_DEPTH:
                return st.just(GetMessageClass(field.message_type)())
            return self.for_message(field.message_type, depth + 1)
        if kind == FieldDescriptor.TYPE_STRING:
            return self._strings()
        if kind == FieldDescriptor.TYPE_BYTES:
            return st.one_of(
                st.binary(max_size=64),
                st.sampled_from([b"", b"\x00", b"%PDF-1.4\n%garbage", b"<html><p>x</p>", b"# T"]),
            )
        if kind == FieldDescriptor.TYPE_BOOL:
            return st.booleans()
        if kind == FieldDescriptor.TYPE_DOUBLE:
            return st.floats(allow_nan=True, allow_infinity=True)
        if kind == FieldDescriptor.TYPE_FLOAT:
            return st.floats(allow_nan=True, allow_infinity=True, width=32)
        if kind == FieldDescriptor.TYPE_ENUM:
            defined = [v.number for v in field.enum_type.values]
            return st.one_of(
                st.sampled_from(defined), st.sampled_from([-1, max(defined) + 1, 2**31 - 1])
            )
        low, high = _INT_EDGES[kind]
        edges = [v for v in (*_SMALL_INTS, low, high) if low <= v <= high]
        return st.one_of(st.sampled_from(edges), st.integers(low, high))

    def _strings(self) -> st.SearchStrategy[str]:
        return st.one_of(
            st.sampled_from(self.pool),
            st.sampled_from(self.pool),
            st.sampled_from(_NASTY_TEXT),
            st.text(max_size=16),
            st.from_regex(r"[A-Za-z][A-Za-z0-9._:-]{0,24}", fullmatch=True),
            st.tuples(st.sampled_from(self.pool), st.text(max_size=3)).map(
                lambda p: p[0] + "\x00" + p[1]
            ),
        )


def _fill(message: Message, values: dict[str, Any]) -> Message:
    for name, value in values.items():
        if value is None:
            continue
        if name.startswith("oneof:"):
            name, value = value
        _set(message, message.DESCRIPTOR.fields_by_name[name], value)
    return message


def _set(message: Message, field: FieldDescriptor, value: Any) -> None:
    target: Any = getattr(message, field.name) if field.type == field.TYPE_MESSAGE else None
    if field.message_type is not None and field.message_type.GetOptions().map_entry:
        value_field = field.message_type.fields_by_name["value"]
        for key, item in value.items():
            if value_field.type == field.TYPE_MESSAGE:
                target[key].CopyFrom(item)
            else:
                target[key] = item
    elif field.is_repeated:
        if field.type == field.TYPE_MESSAGE:
            for item in value:
                target.add().CopyFrom(item)
        else:
            getattr(message, field.name).extend(value)
    elif field.type == field.TYPE_MESSAGE:
        target.CopyFrom(value)
    else:
        setattr(message, field.name, value)
