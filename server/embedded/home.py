"""One home directory of the embedded stack: its lock, its ``config.json``, and the 127.0.0.1
ports remembered there (chosen once per home, so two homes run side by side)."""

from __future__ import annotations

import contextlib
import errno
import fcntl
import json
import os
import random
import socket
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import IO, Any

from server.embedded.errors import EmbeddedError

#: Every embedded server binds this address only.
HOST = "127.0.0.1"

# Keys in home/config.json.
_PORT_KEYS = {
    "postgres": "postgres_port",
    "valkey": "valkey_port",
    "temporal": "temporal_port",
    "temporal_ui": "temporal_ui_port",
    "temporal_http": "temporal_http_port",
}


# --------------------------------------------------------------------------------------------
# Ports on 127.0.0.1
# --------------------------------------------------------------------------------------------


def port_is_free(port: int) -> bool:
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


def pick_free_port(exclude: set[int]) -> int:
    """A free port, preferably below the kernel's ephemeral range (so a remembered port is not
    grabbed later by some outgoing connection)."""
    lo, _hi = _ephemeral_range()
    if lo > 11000:
        rng = random.SystemRandom()
        for _ in range(64):
            port = rng.randrange(10000, lo)
            if port not in exclude and port_is_free(port):
                return port
    for _ in range(64):
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
            s.bind((HOST, 0))
            port = int(s.getsockname()[1])
        if port not in exclude:
            return port
    raise EmbeddedError("could not find a free TCP port on 127.0.0.1")


def tcp_connects(port: int, timeout: float = 0.5) -> bool:
    """Does something accept TCP connections on 127.0.0.1:port?"""
    try:
        with socket.create_connection((HOST, port), timeout=timeout):
            return True
    except OSError:
        return False


# --------------------------------------------------------------------------------------------
# The home: lock, config.json, remembered ports
# --------------------------------------------------------------------------------------------


class HomeLock:
    """``home/embedded.lock``: held (flock) by the one stack running on the home; holds its pid."""

    def __init__(self, home: Path) -> None:
        self.home = home
        self._fh: IO[str] | None = None

    def acquire(self) -> None:
        """Take the lock, or raise EmbeddedError naming the pid holding it. Idempotent."""
        if self._fh is not None:
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
        self._fh = fh

    def release(self) -> None:
        """Let the lock go (if held)."""
        if self._fh is not None:
            with contextlib.suppress(OSError):
                fcntl.flock(self._fh.fileno(), fcntl.LOCK_UN)
            self._fh.close()
            self._fh = None


class HomePorts:
    """The ports of one home's servers, by name ("postgres", "valkey", "temporal",
    "temporal_http", "temporal_ui"): remembered in ``home/config.json`` (a flat JSON object
    whose other keys are preserved), reused while free, replaced when taken."""

    def __init__(self, config_path: Path, progress: Callable[[str], None]) -> None:
        self.config_path = config_path
        self.progress = progress
        self._ports: dict[str, int] = {}

    def __getitem__(self, name: str) -> int:
        return self._ports[name]

    def __contains__(self, name: str) -> bool:
        return name in self._ports

    def get(self, name: str) -> int | None:
        """The port of `name`, if resolved."""
        return self._ports.get(name)

    def remembered(self, name: str) -> Any:
        """What config.json holds for `name`'s port (not checked)."""
        return self._read_config().get(_PORT_KEYS[name])

    def in_use(self, names: list[str]) -> list[str]:
        """Those of `names` whose port some program listens on now."""
        return [n for n in names if n in self._ports and not port_is_free(self._ports[n])]

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
            self.progress(f"{self.config_path} was not a JSON object; moved it to {backup.name}")
            return {}
        return data

    def _write_config(self, data: dict[str, Any]) -> None:
        fd, tmp = tempfile.mkstemp(dir=self.config_path.parent, prefix=".config.", suffix=".json")
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

    def resolve(self, needed: list[str], already_ours: set[str]) -> None:
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
            if port is not None and name not in already_ours and not port_is_free(port):
                new = pick_free_port(taken | {port})
                self.progress(
                    f"{name}: remembered port {port} is taken by another program; "
                    f"using {new} instead"
                )
                port = new
            if port is None:
                port = pick_free_port(taken)
            if config.get(key) != port:
                config[key] = port
                changed = True
            self._ports[name] = port
            taken.add(port)
        if changed:
            self._write_config(config)

    def reassign(self, names: list[str]) -> None:
        """Pick new ports for `names` (taken meanwhile by another program) and remember them."""
        config = self._read_config()
        taken = set(self._ports.values())
        for name in names:
            new = pick_free_port(taken)
            self.progress(f"{name}: port {self._ports[name]} is taken; using {new} instead")
            self._ports[name] = new
            config[_PORT_KEYS[name]] = new
            taken.add(new)
        self._write_config(config)
