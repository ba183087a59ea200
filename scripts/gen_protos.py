"""Regenerate the Python code for protos/loomwork/v1/*.proto.

Usage: python scripts/gen_protos.py [--check]

Generated modules live beside their .proto files and are imported as
`protos.loomwork.v1.<name>_pb2`; protoc writes absolute `from loomwork.v1 import`
lines, which are rewritten to relative imports so the generated package does not
collide with the `loomwork` domain package. With --check nothing is written:
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
PACKAGE_DIR = PROTO_ROOT / "loomwork" / "v1"
GENERATED_SUFFIXES = ("_pb2.py", "_pb2.pyi", "_pb2_grpc.py")
_ABSOLUTE_IMPORT = re.compile(r"^from loomwork\.v1 import ", re.MULTILINE)


def generate(out_dir: Path) -> dict[str, str]:
    """Run protoc into out_dir and return {file name: post-processed text}."""
    protos = sorted(str(p.relative_to(PROTO_ROOT)) for p in PACKAGE_DIR.glob("*.proto"))
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
    files: dict[str, str] = {}
    for path in sorted((out_dir / "loomwork" / "v1").iterdir()):
        if path.name.endswith(GENERATED_SUFFIXES):
            files[path.name] = _ABSOLUTE_IMPORT.sub("from . import ", path.read_text())
    return files


def main(argv: list[str]) -> int:
    check = "--check" in argv
    with tempfile.TemporaryDirectory() as tmp:
        fresh = generate(Path(tmp))
    current = {
        p.name: p.read_text() for p in PACKAGE_DIR.iterdir() if p.name.endswith(GENERATED_SUFFIXES)
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
        (PACKAGE_DIR / name).unlink()
    for name, text in fresh.items():
        (PACKAGE_DIR / name).write_text(text)
    print(f"wrote {len(fresh)} files to {PACKAGE_DIR.relative_to(ROOT)}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
