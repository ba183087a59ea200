"""The embedded PostgreSQL's server settings: memory sized to the machine, the operator's on top.

PostgreSQL's own defaults (`shared_buffers` 128 MB, `maintenance_work_mem` 64 MB) suit a
machine of 2005. With pgvector they cost: a 1M-vector HNSW index of 384 dimensions is ~2 GB,
so searches read it through the OS page cache and a build whose graph outgrows
`maintenance_work_mem` slows down many times (bench/vector_scale.py, bench/RESULTS.md).
The settings go to `loomwork.conf` in PGDATA, included from `postgresql.conf`, so an
`ALTER SYSTEM` still overrides them. An external `DATABASE_URL` is never touched.
"""

from __future__ import annotations

import os
import re
import shutil
from collections.abc import Mapping
from pathlib import Path

from server.embedded.errors import EmbeddedError

MB = 1 << 20
GB = 1 << 30
CONF_NAME = "loomwork.conf"
_INCLUDE = f"include_if_exists = '{CONF_NAME}'"
_NAME = re.compile(r"[a-z_][a-z0-9_]*(\.[a-z_][a-z0-9_]*)?")
# A new pair starts at a comma followed by `name=`; other commas belong to the value
# (`shared_preload_libraries=a,b`).
_PAIR_SPLIT = re.compile(r",\s*(?=[A-Za-z_][A-Za-z0-9_.]*\s*=)")


def machine_memory() -> int:
    """Bytes of memory this process may use: the machine's, or its cgroup's limit if lower."""
    total = os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    for limit_file in ("/sys/fs/cgroup/memory.max", "/sys/fs/cgroup/memory/memory.limit_in_bytes"):
        try:
            text = Path(limit_file).read_text().strip()
        except OSError:
            continue
        if text.isdigit():
            total = min(total, int(text))
    return int(total)


def shm_size() -> int | None:
    """Bytes of /dev/shm, where parallel index builds keep their shared state (None: none)."""
    try:
        return shutil.disk_usage("/dev/shm").total
    except OSError:
        return None


def _mb(value: int) -> str:
    return f"{max(1, value // MB)}MB"


def sized_settings(memory: int, cpus: int, shm: int | None) -> dict[str, str]:
    """The memory settings for a machine of `memory` bytes and `cpus` cores.

    - `shared_buffers`: a quarter of memory (PostgreSQL's usual advice), 128 MB to 4 GB:
      the server shares the machine with the worker, the gRPC server and Temporal, and
      each GB costs ~25 MB touched at start (its buffer headers);
    - `effective_cache_size`: half of memory (what the planner may assume is cached);
    - `maintenance_work_mem`: an eighth of memory, 64 MB to 4 GB: an HNSW build keeps its
      graph here (~2 GB for 1M vectors of 384 dimensions); a parallel build keeps it in
      /dev/shm, so at most half of that (containers often give it 64 MB);
    - `max_parallel_maintenance_workers`: one less than the cores, at most 4.
    """
    workers = max(0, min(4, cpus - 1))
    maintenance = min(max(memory // 8, 64 * MB), 4 * GB)
    if workers and shm is not None:
        maintenance = max(min(maintenance, shm // 2), 16 * MB)
    return {
        "shared_buffers": _mb(min(max(memory // 4, 128 * MB), 4 * GB)),
        "effective_cache_size": _mb(max(memory // 2, 128 * MB)),
        "maintenance_work_mem": _mb(maintenance),
        "max_parallel_maintenance_workers": str(workers),
    }


def parse_settings(spec: str) -> dict[str, str]:
    """`name=value` pairs separated by commas (`shared_buffers=4GB,work_mem=16MB`)."""
    out: dict[str, str] = {}
    for pair in _PAIR_SPLIT.split(spec.strip()):
        if not pair.strip():
            continue
        name, sep, value = pair.partition("=")
        name = name.strip().lower()
        if not sep or not _NAME.fullmatch(name) or not value.strip():
            raise EmbeddedError(
                "LOOMWORK_POSTGRES_SETTINGS: expected name=value pairs separated by commas "
                f"(shared_buffers=4GB,work_mem=16MB), got {pair.strip()!r}"
            )
        out[name] = value.strip()
    return out


def server_settings(overrides: Mapping[str, str] | None = None) -> dict[str, str]:
    """The settings the embedded server starts with: sized to this machine, then `overrides`."""
    settings = sized_settings(machine_memory(), os.cpu_count() or 1, shm_size())
    settings.update(overrides or {})
    return settings


def write_conf(pgdata: Path, settings: Mapping[str, str]) -> None:
    """Write `settings` to PGDATA/loomwork.conf and include it from postgresql.conf (once)."""
    lines = [
        "# Written by Loomwork at every start of the embedded server; edits are lost.",
        "# Change these with LOOMWORK_POSTGRES_SETTINGS (or ALTER SYSTEM, which wins).",
    ]
    for name, value in settings.items():
        lines.append(f"{name} = '" + value.replace("'", "''") + "'")
    (pgdata / CONF_NAME).write_text("\n".join(lines) + "\n")
    main = pgdata / "postgresql.conf"
    text = main.read_text()
    if _INCLUDE not in text:
        main.write_text(text.rstrip("\n") + f"\n\n# Loomwork's settings\n{_INCLUDE}\n")
