"""Hypothesis strategies for any protobuf message, built from its descriptor.

Every field may be left unset or get a hostile or plausible value of its type: strings
with NUL characters, very long ones and ids that exist (`pools`: both tenants' resources
by kind, so that requests reach the code behind the checks); integers at the edges of
their range; NaN and ±Infinity; enum numbers the proto does not define; JSON (Struct,
Value, ListValue) with all of these, JSON Schema words, and nesting too deep; oneofs with
one member set. Messages nest a few levels deep (recursive messages stop there).

A string field's kind comes from its name, by the protos' conventions: `thread_id`,
`agent_name` and `tool_names` are of kinds thread, agent and tool; `id` and `name` are of
their message's kind (`Thread.id`: thread). Pools are keyed by kind without underscores
(`oauthprovider`); every string field also draws from all of them.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from google.protobuf import struct_pb2
from google.protobuf.descriptor import Descriptor, FieldDescriptor
from google.protobuf.message import DecodeError, Message
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
)
# Lengths just past the protos' limits and well past them (made on demand: a strategy
# holding 20 kB strings has a 20 kB repr).
_LONG = st.sampled_from([65, 129, 257, 513, 1025, 4097, 20_000]).map(lambda n: "a" * n)

# JSON Schema words, so that schemas (output, working memory, workflow input) get tried.
_JSON_KEYS = ("type", "properties", "required", "items", "enum", "$ref", "a", "k\x00", "")
_JSON_SCHEMA_WORDS = ("object", "string", "array", "integer", "number", "boolean", "null")
_JSON_TYPES = ("google.protobuf.Struct", "google.protobuf.Value", "google.protobuf.ListValue")


def json_values(pool: Sequence[str]) -> st.SearchStrategy[Any]:
    """JSON with NaN, ±Infinity, NUL in keys and strings, and (sometimes) deep nesting."""
    scalars = st.one_of(
        st.none(),
        st.booleans(),
        st.floats(allow_nan=True, allow_infinity=True),
        st.integers(-(2**53), 2**53).map(float),
        st.text(max_size=12),
        st.sampled_from([*pool, *_NASTY_TEXT, *_JSON_SCHEMA_WORDS]),
    )
    keys = st.one_of(st.text(max_size=8), st.sampled_from(_JSON_KEYS))
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


def field_kind(field: FieldDescriptor) -> str:
    """What a string field names (see the module docstring), without underscores."""
    name = field.name
    if name in ("id", "name") and field.containing_type is not None:
        return field.containing_type.name.lower()
    for suffix in ("_ids", "_id", "_names", "_name"):
        if name.endswith(suffix):
            return name[: -len(suffix)].replace("_", "")
    return ""


class MessageStrategies:
    """Strategies for the messages of one descriptor pool; `pools`: strings worth trying
    (ids and names that exist), by kind."""

    def __init__(self, pools: Mapping[str, Sequence[str]]) -> None:
        self.pools = {kind: list(values) for kind, values in pools.items() if values}
        self.pool = sorted({v for values in self.pools.values() for v in values}) or [""]
        self._cache: dict[tuple[str, int], st.SearchStrategy[Message]] = {}

    def for_message(self, descriptor: Descriptor, depth: int = 0) -> st.SearchStrategy[Message]:
        key = (descriptor.full_name, depth)
        if key not in self._cache:
            self._cache[key] = st.deferred(lambda: self._build(descriptor, depth))
        return self._cache[key]

    def for_request(
        self, descriptor: Descriptor, examples: Sequence[Message] = ()
    ) -> st.SearchStrategy[Message]:
        """Requests of `descriptor`'s type: generated ones, and (given valid `examples` of
        it) examples with a field or two replaced, at the top or in a nested message, which
        get further than most."""
        generated = self.for_message(descriptor)
        if not examples:
            return generated
        mutated = st.sampled_from(list(examples)).flatmap(self.mutations)
        return st.one_of(generated, mutated, mutated)

    def mutations(self, message: Message, depth: int = 0) -> st.SearchStrategy[Message]:
        """`message` with one or two fields replaced, here or in a message it holds."""
        patches = _some_slots(self._slots(message.DESCRIPTOR, depth), min_size=1, max_size=2)
        here = patches.map(lambda patch: _patched(message, patch))
        inner = _inner_messages(message)
        if not inner or depth >= MAX_DEPTH - 1:
            return here
        deeper = st.sampled_from(inner).flatmap(
            lambda place: self.mutations(place[2], depth + 1).map(
                lambda changed: _replaced(message, place, changed)
            )
        )
        return st.one_of(here, deeper)

    def _slots(self, descriptor: Descriptor, depth: int) -> _Slots:
        """The message's slots (a field, or a oneof), each with the strategy of a value."""
        cls = GetMessageClass(descriptor)
        slots: dict[str, st.SearchStrategy[Any]] = {}
        for field in descriptor.fields:
            if field.containing_oneof is None:
                slots[field.name] = self._field(field, depth)
        for oneof in descriptor.oneofs:
            members = [st.tuples(st.just(f.name), self._value(f, depth)) for f in oneof.fields]
            slots[f"oneof:{oneof.name}"] = st.one_of(*members)
        if descriptor.full_name == "google.protobuf.FieldMask":
            slots["paths"] = st.lists(self._field_paths(), max_size=3)
        return _Slots(cls, slots)

    def _build(self, descriptor: Descriptor, depth: int) -> st.SearchStrategy[Message]:
        name = descriptor.full_name
        if name in _JSON_TYPES:
            return _json_message(name, self.pool)
        # Dense: each slot set one time in three; sparse: at most three slots set, so that
        # plausible requests (the right two fields, say) reach the code behind the checks.
        slots = self._slots(descriptor, depth)
        return st.one_of(_some_slots(slots, 0, 3), _dense(slots))

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
            known = self.pools.get(field_kind(field))
            if known:
                named = st.sampled_from(known)
                return st.one_of(named, named, named, self._strings())
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
            _LONG,
            st.text(max_size=16),
            st.from_regex(r"[A-Za-z][A-Za-z0-9._:-]{0,24}", fullmatch=True),
            st.tuples(st.sampled_from(self.pool), st.text(max_size=3)).map(
                lambda p: p[0] + "\x00" + p[1]
            ),
        )


@dataclass(frozen=True)
class _Slots:
    cls: type[Message]
    strategies: dict[str, st.SearchStrategy[Any]]


def _dense(slots: _Slots) -> st.SearchStrategy[Message]:
    values = {k: st.one_of(st.none(), st.none(), v) for k, v in slots.strategies.items()}
    return st.fixed_dictionaries(values).map(lambda chosen: _fill(slots.cls(), chosen))


def _some_slots(slots: _Slots, min_size: int, max_size: int) -> st.SearchStrategy[Message]:
    names = sorted(slots.strategies)
    if not names:
        return st.just(slots.cls())
    chosen = st.lists(st.sampled_from(names), min_size=min_size, max_size=max_size, unique=True)
    return chosen.flatmap(
        lambda keys: st.fixed_dictionaries({k: slots.strategies[k] for k in keys})
    ).map(lambda values: _fill(slots.cls(), values))


def _patched(example: Message, patch: Message) -> Message:
    out = type(example)()
    try:
        out.CopyFrom(example)
        out.MergeFrom(patch)
    except DecodeError:  # the patch nests deeper than protobuf copies: send it alone
        return patch
    return out


_Place = tuple[str, int | None, Message]  # field name, index in a repeated field, the message


def _inner_messages(message: Message) -> list[_Place]:
    """The messages `message` holds (not JSON, not map entries; the first three of a list)."""
    places: list[_Place] = []
    for field, value in message.ListFields():
        kind = field.message_type
        if kind is None or kind.GetOptions().map_entry or kind.full_name in _JSON_TYPES:
            continue
        if field.is_repeated:
            places += [(field.name, i, item) for i, item in enumerate(value[:3])]
        else:
            places.append((field.name, None, value))
    return places


def _replaced(message: Message, place: _Place, changed: Message) -> Message:
    name, index, _ = place
    out = type(message)()
    out.CopyFrom(message)
    target = getattr(out, name) if index is None else getattr(out, name)[index]
    target.CopyFrom(changed)
    return out


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
