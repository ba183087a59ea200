"""Write protos/buf/validate/validate.proto from the protovalidate package installed here.

Usage: python scripts/vendor_protovalidate.py [--check]

The `buf.validate` annotations of protos/loomwork/v1/*.proto import
"buf/validate/validate.proto". Its usual home is the Buf Schema Registry module
buf.build/bufbuild/protovalidate, which needs the network; instead the file is vendored
from the descriptor that ships inside the protovalidate wheel (the module
protovalidate._gen.buf.validate.validate_pb, the same rules the validator enforces), so
protoc and `buf lint` work offline. The descriptor carries no comments: the rules are
documented at protovalidate.com and in that module's docstrings.

With --check nothing is written: the exit code is 1 unless the vendored file compiles to
exactly the package's descriptor (run it after upgrading protovalidate).
"""

from __future__ import annotations

import sys
import tempfile
from pathlib import Path

from google.protobuf import descriptor_pb2, descriptor_pool, message_factory
from google.protobuf.descriptor_pb2 import FieldDescriptorProto as Field
from google.protobuf.text_encoding import CEscape
from google.protobuf.unknown_fields import UnknownFieldSet
from grpc_tools import protoc

ROOT = Path(__file__).resolve().parent.parent
VENDORED = ROOT / "protos" / "buf" / "validate" / "validate.proto"
PREDEFINED = 1160  # (buf.validate.predefined), the one option validate.proto uses itself
MAX_FIELD_NUMBER = 536870911

_SCALARS = {
    Field.TYPE_DOUBLE: "double",
    Field.TYPE_FLOAT: "float",
    Field.TYPE_INT64: "int64",
    Field.TYPE_UINT64: "uint64",
    Field.TYPE_INT32: "int32",
    Field.TYPE_FIXED64: "fixed64",
    Field.TYPE_FIXED32: "fixed32",
    Field.TYPE_BOOL: "bool",
    Field.TYPE_STRING: "string",
    Field.TYPE_BYTES: "bytes",
    Field.TYPE_UINT32: "uint32",
    Field.TYPE_SFIXED32: "sfixed32",
    Field.TYPE_SFIXED64: "sfixed64",
    Field.TYPE_SINT32: "sint32",
    Field.TYPE_SINT64: "sint64",
}
_LABELS = {Field.LABEL_OPTIONAL: "optional", Field.LABEL_REPEATED: "repeated"}
_HEADER = """\
// Vendored by scripts/vendor_protovalidate.py from the descriptor shipped in the
// protovalidate {version} Python package (protovalidate._gen.buf.validate.validate_pb).
// Do not edit. Copyright 2023-2026 Buf Technologies, Inc., Apache License 2.0
// (https://www.apache.org/licenses/LICENSE-2.0). Documentation of every rule:
// https://protovalidate.com and the docstrings of that module.
"""


def package_descriptor() -> descriptor_pb2.FileDescriptorProto:
    """validate.proto's descriptor as the installed protovalidate package ships it."""
    from protovalidate._gen.buf.validate import validate_pb

    return descriptor_pb2.FileDescriptorProto.FromString(validate_pb.desc().proto.to_binary())


def _option_reader(file: descriptor_pb2.FileDescriptorProto) -> type:
    """The PredefinedRules message class, to read the option fields carry as unknown bytes."""
    pool = descriptor_pool.DescriptorPool()
    for module in ("descriptor", "duration", "field_mask", "timestamp"):
        proto = descriptor_pb2.FileDescriptorProto()
        __import__(f"google.protobuf.{module}_pb2", fromlist=["DESCRIPTOR"]).DESCRIPTOR.CopyToProto(
            proto
        )
        pool.Add(proto)
    pool.Add(file)
    return message_factory.GetMessageClass(
        pool.FindMessageTypeByName(f"{file.package}.PredefinedRules")
    )


def _text(value: str) -> str:
    return '"' + CEscape(value, as_utf8=True) + '"'


def _field_type(field: Field) -> str:
    if field.type in (Field.TYPE_MESSAGE, Field.TYPE_ENUM):
        return field.type_name  # fully qualified, with the leading dot
    return _SCALARS[field.type]


def _field_options(field: Field, predefined: type) -> str:
    if not field.HasField("options"):
        return ""
    entries = []
    for unknown in UnknownFieldSet(field.options):
        if unknown.field_number != PREDEFINED:
            raise SystemExit(f"{field.name}: unexpected option {unknown.field_number}")
        rules = predefined.FromString(unknown.data)
        for rule in rules.cel:
            parts = [f"{f.name}: {_text(v)}" for f, v in rule.ListFields()]
            entries.append(f"(buf.validate.predefined).cel = {{{' '.join(parts)}}}")
    if field.options.ListFields():
        raise SystemExit(f"{field.name}: unexpected known options")
    return " [\n    " + ",\n    ".join(entries) + "\n  ]"


def _field(field: Field, predefined: type, indent: str, in_oneof: bool) -> str:
    label = "" if in_oneof else _LABELS[field.label] + " "
    return (
        f"{indent}{label}{_field_type(field)} {field.name} = {field.number}"
        f"{_field_options(field, predefined)};"
    )


def _ranges(ranges: list, *, exclusive_end: bool) -> str:
    parts = []
    for r in ranges:
        end = r.end - 1 if exclusive_end else r.end
        if end >= MAX_FIELD_NUMBER:
            parts.append(f"{r.start} to max")
        else:
            parts.append(str(r.start) if r.start == end else f"{r.start} to {end}")
    return ", ".join(parts)


def _message(message: descriptor_pb2.DescriptorProto, predefined: type) -> list[str]:
    if message.nested_type or message.enum_type or message.extension or message.HasField("options"):
        raise SystemExit(f"{message.name}: nested declarations are not supported")
    lines = [f"message {message.name} {{"]
    oneof_seen: set[int] = set()
    for field in message.field:
        if field.HasField("oneof_index"):
            index = field.oneof_index
            if index in oneof_seen:
                continue
            oneof_seen.add(index)
            lines.append(f"  oneof {message.oneof_decl[index].name} {{")
            for member in message.field:
                if member.HasField("oneof_index") and member.oneof_index == index:
                    lines.append(_field(member, predefined, "    ", in_oneof=True))
            lines.append("  }")
        else:
            lines.append(_field(field, predefined, "  ", in_oneof=False))
    if message.reserved_range:
        lines.append(f"  reserved {_ranges(list(message.reserved_range), exclusive_end=True)};")
    if message.reserved_name:
        lines.append("  reserved " + ", ".join(_text(n) for n in message.reserved_name) + ";")
    if message.extension_range:
        lines.append(f"  extensions {_ranges(list(message.extension_range), exclusive_end=True)};")
    lines.append("}")
    return lines


def _enum(enum: descriptor_pb2.EnumDescriptorProto) -> list[str]:
    lines = [f"enum {enum.name} {{"]
    lines += [f"  {value.name} = {value.number};" for value in enum.value]
    if enum.reserved_range:
        lines.append(f"  reserved {_ranges(list(enum.reserved_range), exclusive_end=False)};")
    if enum.reserved_name:
        lines.append("  reserved " + ", ".join(_text(n) for n in enum.reserved_name) + ";")
    lines.append("}")
    return lines


def _file_options(options: descriptor_pb2.FileOptions) -> list[str]:
    lines = []
    for field, value in options.ListFields():
        shown = ("true" if value else "false") if isinstance(value, bool) else _text(value)
        lines.append(f"option {field.name} = {shown};")
    return lines


def render(file: descriptor_pb2.FileDescriptorProto, version: str) -> str:
    """validate.proto as text that compiles back to `file`."""
    predefined = _option_reader(file)
    blocks = [
        [_HEADER.format(version=version) + 'syntax = "proto2";'],
        [f"package {file.package};"],
    ]
    blocks.append([f'import "{name}";' for name in file.dependency])
    blocks.append(_file_options(file.options))
    blocks += [_message(message, predefined) for message in file.message_type]
    blocks += [_enum(enum) for enum in file.enum_type]
    for extension in file.extension:
        blocks.append(
            [
                f"extend {extension.extendee} {{",
                f"  optional {_field_type(extension)} {extension.name} = {extension.number};",
                "}",
            ]
        )
    return "\n\n".join("\n".join(block) for block in blocks) + "\n"


def compiled(path: Path) -> descriptor_pb2.FileDescriptorProto:
    """The descriptor protoc makes of the vendored file (no source info)."""
    include = str(Path(protoc.__file__).parent / "_proto")
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "set.binpb"
        code = protoc.main(
            [
                "grpc_tools.protoc",
                f"-I{ROOT / 'protos'}",
                f"-I{include}",
                f"--descriptor_set_out={out}",
                str(path.relative_to(ROOT / "protos")),
            ]
        )
        if code != 0:
            raise SystemExit(f"protoc failed on {path}")
        (file,) = descriptor_pb2.FileDescriptorSet.FromString(out.read_bytes()).file
    return file


def main(argv: list[str]) -> int:
    from importlib.metadata import version

    expected = package_descriptor()
    if "--check" not in argv:
        VENDORED.parent.mkdir(parents=True, exist_ok=True)
        VENDORED.write_text(render(expected, version("protovalidate")))
    if compiled(VENDORED) != expected:
        print(f"{VENDORED.relative_to(ROOT)} differs from the protovalidate package's descriptor")
        return 1
    print(f"{VENDORED.relative_to(ROOT)} matches the protovalidate package's descriptor")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
