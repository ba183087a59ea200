"""The client commands of the `loomwork` CLI: every command group, added to one app.

`server/cli.py` builds the `loomwork` app and mounts these with `register(app)`. Each group
lives in its own module and takes `--address`/`--token`/`--timeout` (env
`LOOMWORK_GRPC_ADDRESS`, `LOOMWORK_TOKEN`); get/list commands take `--json` for
machine-readable output.
"""

from __future__ import annotations

import typer

from clients.cli import agents, demo, mcp, messages, rag, schedules, threads, usage, workflows

__all__ = ["register"]


def register(app: typer.Typer) -> None:
    """Adds the client commands (threads, messages, agents, workflows, schedules, rag, mcp,
    usage, demo)
    to `app`."""
    for group in (threads, messages, agents, workflows, schedules, rag, mcp, usage, demo):
        group.register(app)
