"""The embedded PostgreSQL's memory settings: sized to the machine, overridden by the
operator (LOOMWORK_POSTGRES_SETTINGS), and an ALTER SYSTEM still wins over both."""

from __future__ import annotations

import os
from pathlib import Path

import psycopg
import pytest

from server.embedded import EmbeddedError, EmbeddedStack
from server.embedded.postgres_settings import parse_settings

MB = 1 << 20


def _memory_bytes() -> int:
    """This machine's memory from /proc/meminfo, or its cgroup's limit if lower."""
    with open("/proc/meminfo") as meminfo:
        total = next(int(line.split()[1]) * 1024 for line in meminfo if line.startswith("MemTotal"))
    for limit in ("/sys/fs/cgroup/memory.max", "/sys/fs/cgroup/memory/memory.limit_in_bytes"):
        text = Path(limit).read_text().strip() if Path(limit).exists() else ""
        if text.isdigit():
            total = min(total, int(text))
    return total


def _settings(url: str, *names: str) -> dict[str, int]:
    """Settings in bytes (or plain numbers), as the server reports them."""
    units = {"8kB": 8192, "kB": 1024, None: 1}
    with psycopg.connect(url) as conn:
        rows = conn.execute(
            "select name, setting, unit from pg_settings where name = any(%s)", (list(names),)
        ).fetchall()
    return {name: int(setting) * units[unit] for name, setting, unit in rows}


def _show(url: str, name: str) -> str:
    with psycopg.connect(url) as conn:
        row = conn.execute(f"show {name}").fetchone()
    assert row is not None
    return str(row[0])


def test_memory_sized_to_the_machine(tmp_path: Path) -> None:
    # The documented defaults (README, "Configuration"): shared_buffers a quarter of memory
    # (128 MB to 4 GB), effective_cache_size half, maintenance_work_mem an eighth (64 MB to
    # 4 GB, at most half of /dev/shm), one parallel maintenance worker per core but one.
    memory = _memory_bytes()
    shm = os.statvfs("/dev/shm") if Path("/dev/shm").exists() else None
    workers = max(0, min(4, (os.cpu_count() or 1) - 1))
    maintenance = min(max(memory // 8, 64 * MB), 4096 * MB)
    if workers and shm is not None:
        maintenance = max(min(maintenance, shm.f_blocks * shm.f_frsize // 2), 16 * MB)
    with EmbeddedStack(tmp_path / "home", redis=False, temporal=False) as stack:
        assert stack.endpoints is not None and stack.endpoints.database_url
        got = _settings(
            stack.endpoints.database_url,
            "shared_buffers",
            "effective_cache_size",
            "maintenance_work_mem",
            "max_parallel_maintenance_workers",
        )
    assert got == {
        "shared_buffers": min(max(memory // 4, 128 * MB), 4096 * MB) // MB * MB,
        "effective_cache_size": memory // 2 // MB * MB,
        "maintenance_work_mem": maintenance // MB * MB,
        "max_parallel_maintenance_workers": workers,
    }


def test_operator_settings_apply_and_alter_system_wins(tmp_path: Path) -> None:
    home = tmp_path / "home"
    spec = 'shared_buffers=256MB, work_mem=16MB,search_path=public,"$user"'
    with EmbeddedStack(
        home, redis=False, temporal=False, postgres_settings=parse_settings(spec)
    ) as stack:
        assert stack.endpoints is not None and stack.endpoints.database_url
        url = stack.endpoints.database_url
        assert _show(url, "shared_buffers") == "256MB"
        assert _show(url, "work_mem") == "16MB"
        assert _show(url, "search_path") == 'public,"$user"'
        with psycopg.connect(url, autocommit=True) as conn:
            conn.execute("alter system set work_mem = '32MB'")

    # Started again with other settings: the new ones apply, the ALTER SYSTEM still wins.
    with EmbeddedStack(
        home,
        redis=False,
        temporal=False,
        postgres_settings={"shared_buffers": "192MB", "work_mem": "8MB"},
    ) as stack:
        assert stack.endpoints is not None and stack.endpoints.database_url
        assert _show(stack.endpoints.database_url, "shared_buffers") == "192MB"
        assert _show(stack.endpoints.database_url, "work_mem") == "32MB"


def test_a_bad_setting_is_named(tmp_path: Path) -> None:
    with pytest.raises(EmbeddedError, match="name=value pairs"):
        parse_settings("shared_buffers")
    stack = EmbeddedStack(
        tmp_path / "home",
        redis=False,
        temporal=False,
        supervise=False,
        postgres_settings={"shared_buffers": "lots"},
    )
    with pytest.raises(EmbeddedError, match="shared_buffers"):
        stack.start()
