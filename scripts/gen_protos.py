"""Regenerate the Python code for protos/loomwork/v1/*.proto and the protovalidate rules
they import (protos/buf/validate/validate.proto, vendored: see vendor_protovalidate.py).

Usage: python scripts/gen_protos.py [--check]

Generated modules live beside their .proto files and are imported as
`protos.loomwork.v1.<name>_pb2` (and `protos.buf.validate.validate_pb2`); protoc writes
absolute `from loomwork.v1 import` / `from buf.validate import` lines, which are
rewritten to relative imports so the generated packages do not collide with the
`loomwork` domain package. Nothing needs the network. With --check nothing is written:
the exit code is 1 when the checked-in files differ from a fresh generation.
"""

from __future__ import annotations

import re
import sys
import tempfile
from pathlib import Path

from grpc_tools import protoc

ROOT = Path(__file__).resolve().parent.parent
PROTO_ROOT = ROOT / "protos"
PACKAGE_DIRS = (PROTO_ROOT / "loomwork" / "v1", PROTO_ROOT / "buf" / "validate")
GENERATED_SUFFIXES = ("_pb2.py", "_pb2.pyi", "_pb2_grpc.py")
# (absolute import protoc writes, its relative form from protos/<a>/<b>/)
_IMPORTS = (
    (re.compile(r"^from loomwork\.v1 import ", re.MULTILINE), "from . import "),
    (re.compile(r"^from buf\.validate import ", re.MULTILINE), "from ...buf.validate import "),
)


def _relative_imports(text: str) -> str:
    for absolute, relative in _IMPORTS:
        text = absolute.sub(relative, text)
    return text


def generate(out_dir: Path) -> dict[Path, str]:
    """Run protoc into out_dir and return {path under protos/: post-processed text}."""
    protos = sorted(
        str(p.relative_to(PROTO_ROOT)) for folder in PACKAGE_DIRS for p in folder.glob("*.proto")
    )
    include = str(Path(protoc.__file__).parent / "_proto")
    code = protoc.main(
        [
            "grpc_tools.protoc",
            f"-I{PROTO_ROOT}",
            f"-I{include}",
            f"--python_out={out_dir}",
            f"--pyi_out={out_dir}",
            f"--grpc_python_out={out_dir}",
            *protos,
        ]
    )
    if code != 0:
        raise SystemExit(f"protoc failed with exit code {code}")
    files: dict[Path, str] = {}
    for folder in PACKAGE_DIRS:
        relative = folder.relative_to(PROTO_ROOT)
        for path in sorted((out_dir / relative).iterdir()):
            if path.name.endswith(GENERATED_SUFFIXES):
                files[relative / path.name] = _relative_imports(path.read_text())
    return files


def main(argv: list[str]) -> int:
    check = "--check" in argv
    with tempfile.TemporaryDirectory() as tmp:
        fresh = generate(Path(tmp))
    current = {
        p.relative_to(PROTO_ROOT): p.read_text()
        for folder in PACKAGE_DIRS
        for p in folder.iterdir()
        if p.name.endswith(GENERATED_SUFFIXES)
    }
    if check:
        stale = sorted(n for n in fresh.keys() | current.keys() if fresh.get(n) != current.get(n))
        if stale:
            print("generated protobuf code is stale: run `python scripts/gen_protos.py`")
            for name in stale:
                print(f"  {name}")
            return 1
        print(f"generated protobuf code is up to date ({len(fresh)} files)")
        return 0
    for name in current.keys() - fresh.keys():
        (PROTO_ROOT / name).unlink()
    for name, text in fresh.items():
        (PROTO_ROOT / name).write_text(text)
    print(f"wrote {len(fresh)} files under {PROTO_ROOT.relative_to(ROOT)}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
