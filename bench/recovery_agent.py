"""Loomwork's side of bench/peers_recovery.py, named in LOOMWORK_TOOL_MODULES (demo mode off):
the `assistant` agent, as the demo defines it but with one tool, `add`, which records each call
(bench/tool_calls_log.py) as the peers' `add` does."""

from __future__ import annotations

from pydantic import BaseModel, Field
from tool_calls_log import record_call

from loomwork.agents.definitions import AgentDefinition
from loomwork.tools import ToolContext, tool


class AddArgs(BaseModel):
    numbers: list[float] = Field(description="The numbers to add", min_length=1)


@tool(description="Add numbers exactly.")
async def add(args: AddArgs, ctx: ToolContext) -> dict[str, float]:
    record_call(ctx.run_id)
    return {"sum": sum(args.numbers)}


assistant = AgentDefinition(
    name="assistant",
    description="A helpful assistant that adds numbers.",
    instructions=(
        "You are a concise, helpful assistant. Use the tools for arithmetic "
        "and counting instead of guessing."
    ),
    tool_names=["add"],
)
