"""Embedded local servers: PostgreSQL + pgvector, Valkey, Temporal dev server (server/embedded/).

These start real servers under tmp_path homes; the whole file takes ~20-30 s on 2 cores.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import socket
import subprocess
import sys
import textwrap
import threading
import time
import urllib.request
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path

import psycopg
import pytest
import redis

from server.embedded import EmbeddedEndpoints, EmbeddedError, EmbeddedStack
from server.embedded.home import port_is_free

REPO = Path(__file__).resolve().parents[1]


# -- helpers ----------------------------------------------------------------------------------


def _port(url_or_address: str) -> int:
    return int(url_or_address.rsplit(":", 1)[1].split("/")[0])


def _pg_scalar(url: str, query: str) -> object:
    with psycopg.connect(url, connect_timeout=5) as conn:
        row = conn.execute(query).fetchone()
    assert row is not None
    return row[0]


def _redis(url: str) -> redis.Redis:
    return redis.Redis.from_url(url, socket_timeout=5)


async def _temporal_namespaces(address: str) -> tuple[str, list[str]]:
    from temporalio.api.workflowservice.v1 import DescribeNamespaceRequest, ListNamespacesRequest
    from temporalio.client import Client

    client = await Client.connect(address, namespace="default")
    desc = await client.workflow_service.describe_namespace(
        DescribeNamespaceRequest(namespace="default")
    )
    listed = await client.workflow_service.list_namespaces(ListNamespacesRequest())
    return desc.namespace_info.name, [ns.namespace_info.name for ns in listed.namespaces]


async def _temporal_register_namespace(address: str, name: str) -> None:
    from google.protobuf.duration_pb2 import Duration
    from temporalio.api.workflowservice.v1 import RegisterNamespaceRequest
    from temporalio.client import Client

    client = await Client.connect(address)
    retention = Duration()
    retention.FromTimedelta(timedelta(days=1))
    await client.workflow_service.register_namespace(
        RegisterNamespaceRequest(namespace=name, workflow_execution_retention_period=retention)
    )


def _config(home: Path) -> dict[str, object]:
    data = json.loads((home / "config.json").read_text())
    assert isinstance(data, dict)
    return data


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # a zombie still "exists": check its state
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


def _wait_dead(pid: int, timeout: float = 15.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not _pid_alive(pid):
            return True
        time.sleep(0.05)
    return False


@pytest.fixture
def progress() -> Iterator[list[str]]:
    lines: list[str] = []
    yield lines


# -- tests ------------------------------------------------------------------------------------


def test_start_all_three_and_use_them(tmp_path: Path, progress: list[str]) -> None:
    home = tmp_path / "home"
    stack = EmbeddedStack(home, on_progress=progress.append)
    # start from a short-lived thread: the servers must outlive it (PR_SET_PDEATHSIG is per thread)
    box: list[EmbeddedEndpoints] = []
    errors: list[BaseException] = []

    def start() -> None:
        try:
            box.append(stack.start())
        except BaseException as exc:  # surfaced below, with the servers' own words
            errors.append(exc)

    t = threading.Thread(target=start)
    t.start()
    t.join()
    try:
        assert not errors, f"start failed: {errors[0]!r}"
        (ep,) = box
        assert stack.start() == ep  # idempotent
        assert ep.database_url is not None and ep.redis_url is not None
        assert ep.temporal_address is not None and ep.temporal_ui_url is not None
        assert ep.database_url.startswith("postgresql://postgres@127.0.0.1:")
        assert ep.database_url.endswith("/loomwork")
        assert ep.redis_url.startswith("redis://127.0.0.1:") and ep.redis_url.endswith("/0")
        assert ep.temporal_address.startswith("127.0.0.1:")
        assert ep.temporal_ui_url.startswith("http://127.0.0.1:")
        time.sleep(0.3)  # the spawning thread is gone; servers must still answer

        # PostgreSQL 18 + pgvector
        assert str(_pg_scalar(ep.database_url, "show server_version")).startswith("18.")
        version = _pg_scalar(
            ep.database_url, "select extversion from pg_extension where extname='vector'"
        )
        assert isinstance(version, str) and version
        assert _pg_scalar(ep.database_url, "select '[1,2,3]'::vector <-> '[1,2,4]'::vector") == 1.0
        # Valkey
        r = _redis(ep.redis_url)
        assert r.ping() is True
        r.close()
        # Temporal
        name, names = asyncio.run(_temporal_namespaces(ep.temporal_address))
        assert name == "default" and "default" in names
        with urllib.request.urlopen(ep.temporal_ui_url, timeout=10) as resp:
            assert resp.status == 200

        # layout under home
        cfg = _config(home)
        assert cfg["postgres_port"] == _port(ep.database_url)
        assert cfg["valkey_port"] == _port(ep.redis_url)
        assert cfg["temporal_port"] == _port(ep.temporal_address)
        assert cfg["temporal_ui_port"] == _port(ep.temporal_ui_url)
        assert (home / "postgres" / "PG_VERSION").is_file()
        assert (home / "temporal" / "temporal.db").is_file()
        for name in ("postgres", "valkey", "temporal"):
            assert (home / "logs" / f"{name}.log").is_file()
        assert any(line.startswith("postgres ready on 127.0.0.1:") for line in progress)
        assert any(line.startswith("valkey ready on 127.0.0.1:") for line in progress)
        assert any(line.startswith("temporal ready on 127.0.0.1:") for line in progress)

        # the home is locked while in use
        with pytest.raises(EmbeddedError, match="already in use"):
            EmbeddedStack(home).start()
    finally:
        stack.stop()
    stack.stop()  # idempotent
    assert not any(
        _pid_alive(int(p.read_text()))
        for p in (home / "valkey" / "valkey.pid", home / "temporal" / "temporal.pid")
        if p.exists()
    )
    assert not (home / "postgres" / "postmaster.pid").exists()


def test_data_and_ports_persist_across_restart(tmp_path: Path) -> None:
    home = tmp_path / "home"
    with EmbeddedStack(home) as stack:
        first = stack.endpoints
        assert first is not None and first.database_url and first.redis_url
        assert first.temporal_address
        with psycopg.connect(first.database_url) as conn:
            conn.execute("create table notes (id int primary key, body text, v vector(3))")
            conn.execute("insert into notes values (1, 'kept', '[1,2,3]')")
        r = _redis(first.redis_url)
        r.set("loomwork:test", "still here")
        r.close()
        asyncio.run(_temporal_register_namespace(first.temporal_address, "persisted"))
    cfg_before = _config(home)

    with EmbeddedStack(home) as stack:
        second = stack.endpoints
        assert second == first  # same ports, remembered in config.json
        assert second.database_url and second.redis_url and second.temporal_address
        assert _pg_scalar(second.database_url, "select body from notes where id = 1") == "kept"
        r = _redis(second.redis_url)
        assert r.get("loomwork:test") == b"still here"
        r.close()
        _, names = asyncio.run(_temporal_namespaces(second.temporal_address))
        assert "persisted" in names
    assert _config(home) == cfg_before


def test_two_homes_side_by_side(tmp_path: Path) -> None:
    with (
        EmbeddedStack(tmp_path / "a") as a,
        EmbeddedStack(tmp_path / "b", temporal_ui=False) as b,
    ):
        ea, eb = a.endpoints, b.endpoints
        assert ea is not None and eb is not None
        assert eb.temporal_ui_url is None and ea.temporal_ui_url is not None
        assert "temporal_ui_port" not in _config(tmp_path / "b")
        ports_a = {v for k, v in _config(tmp_path / "a").items() if k.endswith("_port")}
        ports_b = {v for k, v in _config(tmp_path / "b").items() if k.endswith("_port")}
        assert len(ports_a) == 5 and len(ports_b) == 4
        assert not ports_a & ports_b
        for ep, marker in ((ea, "a"), (eb, "b")):
            assert ep.database_url and ep.redis_url and ep.temporal_address
            with psycopg.connect(ep.database_url) as conn:
                conn.execute("create table home (name text)")
                conn.execute("insert into home values (%s)", (marker,))
            r = _redis(ep.redis_url)
            r.set("home", marker)
            r.close()
            name, _ = asyncio.run(_temporal_namespaces(ep.temporal_address))
            assert name == "default"
        for ep, marker in ((ea, "a"), (eb, "b")):
            assert ep.database_url and ep.redis_url
            assert _pg_scalar(ep.database_url, "select name from home") == marker
            r = _redis(ep.redis_url)
            assert r.get("home") == marker.encode()
            r.close()


def test_taken_remembered_port_is_replaced(tmp_path: Path) -> None:
    # a long home path also exercises the short unix-socket-dir fallback for postgres
    home = tmp_path / ("long-home-" + "x" * 60)
    with EmbeddedStack(home, temporal_ui=False) as stack:
        first = stack.endpoints
        assert first is not None and first.database_url and first.redis_url
        with psycopg.connect(first.database_url) as conn:
            conn.execute("create table t (x int)")
            conn.execute("insert into t values (42)")
        # postmaster.pid line 5 is the unix socket dir: too long under home, so under /tmp
        socket_dir = (home / "postgres" / "postmaster.pid").read_text().splitlines()[4]
        assert socket_dir.startswith("/tmp/loomwork-pg-"), socket_dir
        assert len(f"{socket_dir}/.s.PGSQL.65535") <= 107
    cfg = _config(home)
    cfg["grpc_port"] = 50999  # a key other code owns: must survive rewrites
    (home / "config.json").write_text(json.dumps(cfg))

    squatters = []
    try:
        for key in ("postgres_port", "valkey_port", "temporal_port"):
            s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # ours may be in TIME_WAIT
            s.bind(("127.0.0.1", int(cfg[key])))  # type: ignore[call-overload]
            s.listen()
            squatters.append(s)
        lines: list[str] = []
        with EmbeddedStack(home, temporal_ui=False, on_progress=lines.append) as stack:
            second = stack.endpoints
            assert second is not None and second.database_url and second.redis_url
            assert second.temporal_address
            assert _port(second.database_url) != cfg["postgres_port"]
            assert _port(second.redis_url) != cfg["valkey_port"]
            assert _port(second.temporal_address) != cfg["temporal_port"]
            assert _pg_scalar(second.database_url, "select x from t") == 42  # same data
            r = _redis(second.redis_url)
            assert r.ping() is True
            r.close()
            name, _ = asyncio.run(_temporal_namespaces(second.temporal_address))
            assert name == "default"
            new_cfg = _config(home)
            assert new_cfg["postgres_port"] == _port(second.database_url)
            assert new_cfg["valkey_port"] == _port(second.redis_url)
            assert new_cfg["temporal_port"] == _port(second.temporal_address)
            assert new_cfg["grpc_port"] == 50999
            taken = [line for line in lines if "is taken" in line]
            assert len(taken) == 3, lines
            assert any(f"port {cfg['postgres_port']}" in line for line in taken)
    finally:
        for s in squatters:
            s.close()


def test_port_grabbed_between_check_and_bind_is_retried(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A port looked free when checked but the server could not bind it: pick another, retry."""
    home = tmp_path / "home"
    home.mkdir()
    squatters = []
    try:
        for _ in range(3):
            s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            s.bind(("127.0.0.1", 0))
            s.listen()
            squatters.append(s)
        squatted = [int(s.getsockname()[1]) for s in squatters]
        keys = ("postgres_port", "valkey_port", "temporal_port")
        (home / "config.json").write_text(json.dumps(dict(zip(keys, squatted, strict=True))))
        monkeypatch.setattr(
            "server.embedded.home.port_is_free", lambda p: p in squatted or port_is_free(p)
        )

        lines: list[str] = []
        with EmbeddedStack(home, temporal_ui=False, on_progress=lines.append) as stack:
            ep = stack.endpoints
            assert ep is not None and ep.database_url and ep.redis_url and ep.temporal_address
            got = {_port(ep.database_url), _port(ep.redis_url), _port(ep.temporal_address)}
            assert not got & set(squatted)
            assert _pg_scalar(ep.database_url, "select 1") == 1
            assert _redis(ep.redis_url).ping() is True
            cfg = _config(home)
            assert cfg["postgres_port"] == _port(ep.database_url)
            assert cfg["temporal_port"] == _port(ep.temporal_address)
        for name in ("postgres", "valkey", "temporal"):
            assert any(line.startswith(f"{name}: a port was taken") for line in lines), lines
    finally:
        for s in squatters:
            s.close()


def test_recovers_after_parent_killed(tmp_path: Path) -> None:
    """SIGKILL the owning process: Valkey and Temporal die with it (PDEATHSIG); the daemonized
    postmaster survives and is reused by the next start."""
    home = tmp_path / "home"
    script = textwrap.dedent(
        f"""
        import os, signal, sys
        from pathlib import Path
        from server.embedded import EmbeddedStack
        ep = EmbeddedStack(Path({str(home)!r}), temporal_ui=False).start()
        print(ep.database_url, flush=True)
        os.kill(os.getpid(), signal.SIGKILL)
        """
    )
    proc = subprocess.run(
        [sys.executable, "-c", script],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert proc.returncode == -signal.SIGKILL, proc.stderr
    url = proc.stdout.strip()
    valkey_pid = int((home / "valkey" / "valkey.pid").read_text())
    temporal_pid = int((home / "temporal" / "temporal.pid").read_text())
    assert _wait_dead(valkey_pid), "valkey outlived its parent"
    assert _wait_dead(temporal_pid), "temporal outlived its parent"
    postmaster_pid = int((home / "postgres" / "postmaster.pid").read_text().split()[0])
    assert _pid_alive(postmaster_pid)

    lines: list[str] = []
    with EmbeddedStack(home, temporal_ui=False, on_progress=lines.append) as stack:
        ep = stack.endpoints
        assert ep is not None and ep.database_url == url
        assert any("reusing" in line for line in lines), lines
        assert _pg_scalar(url, "select 1") == 1
        assert ep.redis_url and _redis(ep.redis_url).ping() is True
    assert _wait_dead(postmaster_pid, 5)
