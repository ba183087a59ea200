"""The `add` tool's side effect in bench/peers_recovery.py: each call appends a line naming its
run to the file BENCH_TOOL_LOG (when set), so the benchmark can count how often a run's tool
ran — a worker that replays a run must not run it again."""

from __future__ import annotations

import os
from pathlib import Path


def record_call(run: str) -> None:
    """Append `run` to BENCH_TOOL_LOG, if set."""
    path = os.environ.get("BENCH_TOOL_LOG")
    if path:
        with open(path, "a") as out:
            out.write(run + "\n")


def calls(path: Path, run: str) -> int:
    """How many calls of `run` the log at `path` holds."""
    return path.read_text().splitlines().count(run) if path.exists() else 0
