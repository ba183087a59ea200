"""`loomwork up`'s Temporal worker, in a process of its own.

One event loop that both accepts calls and runs the worker makes every accepted call wait
its turn behind the model streams the worker parses and publishes: under 200 concurrent
streams the first event took seconds (bench/RESULTS.md, "Load"). So `up` runs the worker as
a child (`loomwork up-worker`): started once the server is up, started again when it dies
(after 0.5 s, doubling per death up to 30 s; logged), given up on after 8 failed starts in a
row, and stopped after the server has drained. It logs where `up` logs (it inherits `up`'s
stdout and stderr), and gets SIGTERM if `up` itself dies.
"""

from __future__ import annotations

import contextlib
import os
import select
import subprocess
import sys
import threading
import time
from collections.abc import Callable

from server.embedded.supervision import exit_description, spawn, stop_child
from server.embedded.watch import ServerWatch, Supervised

NAME = "worker"


class WorkerStartFailed(Exception):
    """The worker process exited, or did not get ready, while starting."""


class WorkerProcess:
    """The worker child of `loomwork up`: `start` it, ask whether it is `ready`, `stop` it.

    `env` is the child's whole environment (where the servers are, the home, demo mode...);
    `progress` gets each line worth logging; `on_lost(message)` is called (from the watch's
    thread) when the worker died and could not be started again."""

    #: Seconds a start may take until the worker polls (imports, connections, migrations check).
    ready_timeout: float = 120.0
    #: Seconds before a worker that died is started again (doubling per death, up to 30 s).
    restart_delay: float = 0.5
    #: Failed starts in a row before a worker that died is given up on.
    restart_attempts: int = 8

    def __init__(
        self,
        env: dict[str, str],
        *,
        verbose: bool = False,
        progress: Callable[[str], None],
        on_lost: Callable[[str], None] | None = None,
    ) -> None:
        self.env = env
        self.verbose = verbose
        self.progress = progress
        self.on_lost = on_lost
        self.proc: subprocess.Popen[bytes] | None = None
        # Where the ready worker serves /healthz and /metrics ("host:port").
        self.http_address = ""
        self._ready_pid = 0
        self._lock = threading.RLock()
        self._watch: ServerWatch | None = None
        self._stopping = threading.Event()  # a start under way gives up waiting

    @property
    def pid(self) -> int:
        return self.proc.pid if self.proc is not None else 0

    def start(self) -> None:
        """Start the worker and wait until it is ready; then keep it running."""
        with self._lock:
            self._launch()
        self._watch = ServerWatch(
            [Supervised(NAME, self._alive, self._why_stopped, self._restart, "restarted")],
            self._lock,
            self.progress,
            on_gave_up=self.on_lost,
            first_delay=self.restart_delay,
            give_up_after=self.restart_attempts,
        )
        self._watch.start()

    def ready(self) -> bool:
        """Is the worker running, started up and polling?"""
        proc = self.proc
        return proc is not None and proc.poll() is None and self._ready_pid == proc.pid

    async def health_problem(self) -> str | None:
        """What health says of the worker (None: it runs)."""
        if self.ready():
            return None
        if not self._ready_pid:
            return "the worker process is starting"
        return "the worker process is not running (it is being started again)"

    def lost(self) -> str | None:
        """Why the worker was given up on, if it was."""
        return self._watch.given_up.get(NAME) if self._watch is not None else None

    def stop(self) -> None:
        """Stop watching, then stop the worker gracefully (SIGTERM: it finishes or hands back
        its activities), killing it if it hangs. Idempotent; clean if it died already."""
        self._stopping.set()
        if self._watch is not None:  # kept: `lost` still answers
            self._watch.stop()
        with self._lock:
            proc, self.proc = self.proc, None
            if proc is not None:
                stop_child(proc, NAME, self.progress)

    # -- the child ---------------------------------------------------------------------------

    def _alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def _why_stopped(self) -> str:
        code = self.proc.poll() if self.proc is not None else None
        return "not started" if code is None else exit_description(code)

    def _restart(self) -> None:
        proc, self.proc = self.proc, None
        if proc is not None:  # what is left of it: its process group, and its exit status
            stop_child(proc, NAME, lambda line: None)
        self._launch()

    def _launch(self) -> None:
        """Spawn the worker and block until it says it is ready (WorkerStartFailed if it
        exits or takes longer than `ready_timeout`)."""
        read_end, write_end = os.pipe()
        try:
            args = [sys.executable, "-m", "server.cli", "up-worker", "--ready-fd", str(write_end)]
            if self.verbose:
                args.append("--verbose")
            self.proc = spawn(args, stdin=subprocess.DEVNULL, env=self.env, pass_fds=(write_end,))
            os.close(write_end)
            write_end = -1
            self.http_address = self._wait_ready(self.proc, read_end)
            self._ready_pid = self.proc.pid
        finally:
            os.close(read_end)
            if write_end >= 0:
                os.close(write_end)
        self.progress(f"worker process {self.proc.pid} is polling")

    def _wait_ready(self, proc: subprocess.Popen[bytes], pipe: int) -> str:
        """The line the child writes to `pipe` once it polls (its HTTP address)."""
        deadline = time.monotonic() + self.ready_timeout
        data = b""
        while b"\n" not in data:
            remaining = deadline - time.monotonic()
            if self._stopping.is_set():
                self._discard(proc)
                raise WorkerStartFailed("stopped while the worker process was starting")
            if remaining <= 0:
                self._discard(proc)
                raise WorkerStartFailed(
                    f"the worker process did not get ready in {self.ready_timeout:.0f}s"
                )
            readable, _, _ = select.select([pipe], [], [], min(remaining, 1.0))
            if not readable:
                continue
            chunk = os.read(pipe, 4096)
            if not chunk:  # closed without a word: it exited (or is exiting)
                with contextlib.suppress(subprocess.TimeoutExpired):
                    proc.wait(10)
                code = proc.poll()
                how = exit_description(code) if code is not None else "closed its pipe"
                self._discard(proc)
                raise WorkerStartFailed(f"the worker process exited while starting ({how})")
            data += chunk
        return data.split(b"\n", 1)[0].decode()

    def _discard(self, proc: subprocess.Popen[bytes]) -> None:
        stop_child(proc, NAME, lambda line: None)
