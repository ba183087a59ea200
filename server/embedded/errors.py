"""The errors of the embedded stack."""

from __future__ import annotations


class EmbeddedError(RuntimeError):
    """A server could not be set up, started or reached; the message says why."""


class PortInUse(Exception):
    """A server failed to start because one of its ports was taken meanwhile."""

    def __init__(self, server: str, port_names: list[str]) -> None:
        super().__init__(server, port_names)
        self.server = server  # "postgres", "valkey" or "temporal"
        self.port_names = port_names  # the ports to pick anew before trying again
