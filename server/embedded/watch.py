"""Keeping the embedded servers (and `loomwork up`'s worker process) running: a server that
dies is started again on its ports and data, with backoff, from one daemon thread; one that
cannot be started again is given up on, and whoever runs the stack is told."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

_log = logging.getLogger("loomwork.embedded")


@dataclass(frozen=True)
class Supervised:
    """A server the watch keeps running."""

    name: str
    #: Does it run now?
    running: Callable[[], bool]
    #: Why it stopped, for the log ("killed by SIGKILL").
    why_stopped: Callable[[], str]
    #: Start it again on its ports and data, blocking until it answers; raises when it cannot.
    restart: Callable[[], None]
    #: How the log says it came back ("restarted on its ports and data").
    restarted: str = "restarted on its ports and data"


@dataclass
class _Health:
    down_since: float | None = None
    next_try: float = 0.0
    deaths: int = 0  # restarts since it last stayed up `stable_after` seconds
    failed_starts: int = 0  # restarts in a row that failed
    up_since: float = 0.0
    given_up: str = ""


class ServerWatch:
    """Checks each server every `interval` seconds and restarts the dead ones, waiting
    `first_delay` doubling per death (up to `longest_delay`) until one stays up
    `stable_after` seconds; after `give_up_after` failed starts in a row it gives up on the
    server and calls `on_gave_up(message)`.

    Restarts hold `lock`, and none begins once `stop` was called: take the same lock to stop
    the servers after `stop()` and no restart can race with it."""

    def __init__(
        self,
        servers: list[Supervised],
        lock: threading.RLock,
        progress: Callable[[str], None],
        *,
        on_gave_up: Callable[[str], None] | None = None,
        interval: float = 0.5,
        first_delay: float = 0.5,
        longest_delay: float = 30.0,
        give_up_after: int = 8,
        stable_after: float = 60.0,
    ) -> None:
        self.servers = servers
        self.lock = lock
        self.progress = progress
        self.on_gave_up = on_gave_up
        self.interval = interval
        self.first_delay = first_delay
        self.longest_delay = longest_delay
        self.give_up_after = give_up_after
        self.stable_after = stable_after
        self._health = {s.name: _Health(up_since=time.monotonic()) for s in servers}
        self._stopping = threading.Event()
        self._thread: threading.Thread | None = None

    @property
    def given_up(self) -> dict[str, str]:
        """The servers given up on, with why."""
        return {name: h.given_up for name, h in self._health.items() if h.given_up}

    def start(self) -> None:
        """Begin watching (from a daemon thread)."""
        self._thread = threading.Thread(
            target=self._run, name="loomwork-embedded-watch", daemon=True
        )
        self._thread.start()

    def stop(self) -> None:
        """Stop watching; waits for a restart under way to end. Idempotent."""
        self._stopping.set()
        thread, self._thread = self._thread, None
        if thread is not None and thread is not threading.current_thread():
            thread.join()

    def _run(self) -> None:
        while not self._stopping.wait(self.interval):
            for server in self.servers:
                if self._stopping.is_set():
                    return
                try:
                    self._check(server)
                except Exception:  # a bug here must not end the watch
                    _log.exception("checking %s failed", server.name)

    def _delay(self, health: _Health) -> float:
        doublings = health.deaths + health.failed_starts
        return min(self.first_delay * 2**doublings, self.longest_delay)

    def _check(self, server: Supervised) -> None:
        health = self._health[server.name]
        now = time.monotonic()
        if health.given_up:
            return
        if health.down_since is None:
            if server.running():
                if health.deaths and now - health.up_since >= self.stable_after:
                    health.deaths = 0
                return
            health.down_since = now
            health.next_try = now + self._delay(health)
            self.progress(
                f"{server.name} died ({server.why_stopped()}); restarting it in "
                f"{health.next_try - now:.1f}s"
            )
        if now < health.next_try:
            return
        with self.lock:
            if self._stopping.is_set():
                return
            try:
                if not server.running():  # a slow start of the last try may have made it
                    server.restart()
            except Exception as exc:
                self._failed(server, health, exc)
                return
        down = time.monotonic() - health.down_since
        health.deaths += 1
        health.failed_starts = 0
        health.down_since = None
        health.up_since = time.monotonic()
        self.progress(f"{server.name} {server.restarted} ({down:.1f}s down)")

    def _failed(self, server: Supervised, health: _Health, exc: Exception) -> None:
        health.failed_starts += 1
        reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        if health.failed_starts >= self.give_up_after:
            health.given_up = reason
            message = (
                f"{server.name} died and could not be started again "
                f"({health.failed_starts} tries): {reason}"
            )
            self.progress(message)
            if self.on_gave_up is not None:
                try:
                    self.on_gave_up(message)
                except Exception:
                    _log.exception("on_gave_up callback failed")
            return
        health.next_try = time.monotonic() + self._delay(health)
        self.progress(
            f"{server.name} did not start again ({reason}); next try in "
            f"{health.next_try - time.monotonic():.1f}s"
        )
