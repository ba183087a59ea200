"""The embedded stack: whatever of PostgreSQL, Valkey and the Temporal dev server is needed,
started together under one home directory, kept running (a server that dies is started again
on its ports and data), and stopped together (``loomwork up``, tests)."""

from __future__ import annotations

import atexit
import contextlib
import logging
import os
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType

from server.embedded.errors import EmbeddedError, PortInUse
from server.embedded.home import HomeLock, HomePorts
from server.embedded.postgres import PostgresServer, postgres_bin_dir
from server.embedded.supervision import READY_TIMEOUT
from server.embedded.temporal import TemporalDevServer, find_temporal_binary
from server.embedded.valkey import ValkeyServer, valkey_binary
from server.embedded.watch import ServerWatch, Supervised

_log = logging.getLogger("loomwork.embedded")


@dataclass(frozen=True)
class EmbeddedEndpoints:
    """Where the started servers answer (None for a server not started)."""

    database_url: str | None  # postgresql://postgres@127.0.0.1:PORT/loomwork
    redis_url: str | None  # redis://127.0.0.1:PORT/0
    temporal_address: str | None  # 127.0.0.1:PORT
    temporal_ui_url: str | None  # http://127.0.0.1:PORT (None when the UI is disabled)


class EmbeddedStack:
    """Starts whatever of PostgreSQL, Valkey and the Temporal dev server is needed, under one
    home dir. With `supervise`, a server that dies is started again (`ServerWatch`: backoff,
    logged through `on_progress`); `on_server_lost(message)` is called, from the watch's
    thread, for one that could not be started again. `postgres_settings` (name -> value) go
    to PostgreSQL over the memory settings sized to the machine (`postgres_settings.py`)."""

    ready_timeout: float = READY_TIMEOUT
    #: Seconds before a server that died is started again (doubling per death, up to 30 s).
    restart_delay: float = 0.5
    #: Failed starts in a row before a server that died is given up on.
    restart_attempts: int = 8

    def __init__(
        self,
        home: Path,
        *,
        postgres: bool = True,
        redis: bool = True,
        temporal: bool = True,
        temporal_ui: bool = True,
        on_progress: Callable[[str], None] | None = None,
        supervise: bool = True,
        on_server_lost: Callable[[str], None] | None = None,
        postgres_settings: Mapping[str, str] | None = None,
    ) -> None:
        self.home = Path(home).expanduser().absolute()
        self.want_postgres = postgres
        self.want_redis = redis
        self.want_temporal = temporal
        self.want_temporal_ui = temporal and temporal_ui
        self.supervise = supervise
        self.on_server_lost = on_server_lost
        self._on_progress = on_progress
        self._watch: ServerWatch | None = None

        self.config_path = self.home / "config.json"
        self.logs_dir = self.home / "logs"
        self.pgdata = self.home / "postgres"
        self.valkey_dir = self.home / "valkey"
        self.temporal_dir = self.home / "temporal"

        self._mutex = threading.RLock()
        self._lock = HomeLock(self.home)
        self._endpoints: EmbeddedEndpoints | None = None
        self._ports = HomePorts(self.config_path, self._progress)
        self._atexit_registered = False
        self._owner_pid = os.getpid()

        self._postgres = PostgresServer(
            self.home, self.logs_dir, self._ports, self._progress, postgres_settings
        )
        self._valkey = ValkeyServer(self.home, self.logs_dir, self._ports, self._progress)
        self._temporal = TemporalDevServer(
            self.home, self.logs_dir, self._ports, self._progress, ui=self.want_temporal_ui
        )

    # -- public API --------------------------------------------------------------------------

    @property
    def endpoints(self) -> EmbeddedEndpoints | None:
        """Where the servers answer, once started."""
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

    @property
    def lost(self) -> dict[str, str]:
        """The servers that died and could not be started again, with why."""
        return self._watch.given_up if self._watch is not None else {}

    def stop(self) -> None:
        """Stop in reverse order (Temporal, Valkey, PostgreSQL), gracefully, also when one
        died meanwhile. Idempotent."""
        self._stop_watching()
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
        self._lock.acquire()
        if not self._atexit_registered:
            self._owner_pid = os.getpid()
            atexit.register(self._atexit_stop)
            self._atexit_registered = True

        # Binaries first: fail before starting anything if one is missing.
        pg_bin = postgres_bin_dir() if self.want_postgres else None
        valkey_bin = valkey_binary() if self.want_redis else None
        temporal_bin = find_temporal_binary() if self.want_temporal else None

        # Leftovers from a crashed run hold our remembered ports; deal with them first.
        pg_reuse_port: int | None = None
        if pg_bin is not None:
            self._postgres.prepare(pg_bin)
            pg_reuse_port = self._postgres.leftover(pg_bin)
        if valkey_bin is not None:
            self._valkey.kill_leftover()
        if temporal_bin is not None:
            self._temporal.kill_leftover()

        needed = []
        if pg_bin is not None:
            needed.append("postgres")
        if valkey_bin is not None:
            needed.append("valkey")
        if temporal_bin is not None:
            needed += self._temporal.port_names()
        self._ports.resolve(needed, already_ours={"postgres"} if pg_reuse_port else set())

        # Launch the slow-to-answer ones first, then do postgres (blocking) while they boot.
        # A port can be grabbed between our check and the server's bind: then pick new ones
        # for that server and try again (up to 3 times per server).
        failures: dict[str, int] = {}
        valkey_ready = temporal_ready = False
        while True:
            if temporal_bin is not None and self._temporal.proc is None:
                self._temporal.start(temporal_bin)
            if valkey_bin is not None and self._valkey.proc is None:
                self._valkey.start(valkey_bin)
            try:
                if pg_bin is not None and not self._postgres.running:
                    self._postgres.start(
                        pg_bin, reuse=pg_reuse_port is not None, ready_timeout=self.ready_timeout
                    )
                if valkey_bin is not None and not valkey_ready:
                    self._valkey.wait(self.ready_timeout)
                    valkey_ready = True
                if temporal_bin is not None and not temporal_ready:
                    self._temporal.wait(temporal_bin, self.ready_timeout)
                    temporal_ready = True
                break
            except PortInUse as exc:
                name = exc.server
                failures[name] = failures.get(name, 0) + 1
                if failures[name] >= 3:
                    raise EmbeddedError(
                        f"{name}: its port was taken by another program 3 times in a row; "
                        f"see {self.logs_dir / (name + '.log')}"
                    ) from None
                self._progress(f"{name}: a port was taken meanwhile, picking new ones")
                self._ports.reassign(exc.port_names)

        if self.supervise:
            self._watch = ServerWatch(
                self._supervised(pg_bin, valkey_bin, temporal_bin),
                self._mutex,
                self._progress,
                on_gave_up=self._server_lost,
                first_delay=self.restart_delay,
                give_up_after=self.restart_attempts,
            )
            self._watch.start()
        ep = EmbeddedEndpoints(
            database_url=self._postgres.url() if pg_bin is not None else None,
            redis_url=self._valkey.url() if valkey_bin is not None else None,
            temporal_address=self._temporal.address() if temporal_bin is not None else None,
            temporal_ui_url=self._temporal.ui_url(),
        )
        self._endpoints = ep
        self._progress(
            f"embedded stack ready in {time.monotonic() - t_all:.1f}s (home {self.home})"
        )
        return ep

    def _supervised(
        self, pg_bin: Path | None, valkey_bin: Path | None, temporal_bin: Path | None
    ) -> list[Supervised]:
        """How the watch tells each started server runs, and starts it again."""
        servers = []
        if pg_bin is not None:
            postgres = self._postgres

            def restart_postgres() -> None:
                postgres.start(pg_bin, reuse=False, ready_timeout=self.ready_timeout)

            servers.append(
                Supervised("postgres", postgres.alive, postgres.why_stopped, restart_postgres)
            )
        if valkey_bin is not None:
            valkey = self._valkey

            def restart_valkey() -> None:
                valkey.discard()
                valkey.start(valkey_bin)
                valkey.wait(self.ready_timeout)

            servers.append(Supervised("valkey", valkey.alive, valkey.why_stopped, restart_valkey))
        if temporal_bin is not None:
            temporal = self._temporal

            def restart_temporal() -> None:
                temporal.discard()
                temporal.start(temporal_bin)
                temporal.wait(temporal_bin, self.ready_timeout)

            servers.append(
                Supervised("temporal", temporal.alive, temporal.why_stopped, restart_temporal)
            )
        return servers

    def _server_lost(self, message: str) -> None:
        _log.error("%s", message)
        if self.on_server_lost is not None:
            self.on_server_lost(message)

    def _stop_watching(self) -> None:
        """Stop the watch (not holding the mutex: a restart under way holds it to its end)."""
        watch = self._watch
        if watch is not None:
            watch.stop()

    def _atexit_stop(self) -> None:
        if os.getpid() != self._owner_pid:  # a forked child exiting must not stop our servers
            return
        with contextlib.suppress(Exception):
            self._stop_watching()
            self._stop_all(quiet=True)

    def _stop_all(self, *, quiet: bool) -> None:
        errors: list[str] = []
        # Reverse order. Temporal takes ~2 s to shut down gracefully: signal it first and let it
        # wind down while Valkey and PostgreSQL stop.
        temporal_signalled_at = self._temporal.send_stop_signal()
        try:
            self._valkey.stop()
        except Exception as exc:
            errors.append(f"valkey: {exc}")
        if self._postgres.running:
            try:
                self._postgres.stop()
            except Exception as exc:
                errors.append(f"postgres: {exc}")
        try:
            self._temporal.stop(signalled_at=temporal_signalled_at)
        except Exception as exc:
            errors.append(f"temporal: {exc}")
        self._endpoints = None
        self._lock.release()
        if self._atexit_registered:
            with contextlib.suppress(Exception):
                atexit.unregister(self._atexit_stop)
            self._atexit_registered = False
        if errors and not quiet:
            raise EmbeddedError("embedded stack did not stop cleanly: " + "; ".join(errors))
