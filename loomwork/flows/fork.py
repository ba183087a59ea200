"""Forking a workflow run: which recorded step outputs a new run may reuse.

A fork starts a new run of the same workflow that does not run again the steps the
original finished before the fork point: their recorded outputs are handed to the new
run, which records them as reused. The fork point and everything after it run anew.
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel

from loomwork.errors import InvalidArgument
from loomwork.flows.state import RunState

# Only leaf steps (a function or a tool) are reused: composite steps (parallel, branch,
# foreach, loop...) run again, and reuse their children's outputs in turn.
REUSABLE_KINDS = frozenset({"step", "tool"})


def reusable_outputs(original: RunState, from_step: str) -> dict[str, Any]:
    """The outputs, by step path, of the leaf steps that `original` finished before it first
    started `from_step` (a step id, or the path of one step execution such as
    `each[2].fetch`). INVALID_ARGUMENT naming `from_step_id` when the run never started it."""
    index = next(
        (i for i, s in enumerate(original.steps) if from_step in (s.path, s.step_id)), None
    )
    if index is None:
        raise InvalidArgument.field(
            "from_step_id", f"run {original.run_id!r} has no execution of step {from_step!r}"
        )
    return {
        s.path: s.output
        for s in original.steps[:index]
        if s.kind in REUSABLE_KINDS and s.status == "succeeded"
    }


class Fork(BaseModel):
    """What a forked run starts with besides its input."""

    forked_from: str
    reused: dict[str, Any]
