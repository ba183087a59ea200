"""The `loomwork` CLI's client commands, one module per command group (see `commands`).

`server/cli.py` mounts them with `register(app)` and runs `run_demo` for `loomwork up --demo`.
"""

from clients.cli.commands import register
from clients.cli.demo import run_demo

__all__ = ["register", "run_demo"]
