"""Guardrail processors as a team writes them, in a module named in LOOMWORK_TOOL_MODULES by
tests/test_agents_guardrails.py: one rewrites the input, one stops a run; and an agent
defined in code that uses them."""

from __future__ import annotations

import re

from loomwork.agents.definitions import AgentDefinition
from loomwork.guardrails import (
    CustomProcessorRef,
    PiiRedaction,
    ProcessorContext,
    processor,
    trip,
)

INTERNAL_HOST = re.compile(r"\b[a-z0-9-]+\.corp\.internal\b")


@processor
def hide_internal_hosts(text: str, ctx: ProcessorContext) -> str | None:
    """Internal host names never reach the model."""
    return INTERNAL_HOST.sub("<internal host>", text)


@processor(name="no-launch-codes")
async def no_launch_codes(text: str, ctx: ProcessorContext) -> str | None:
    """Stops a run whose text speaks of launch codes."""
    if "launch code" in text.lower():
        raise trip(f"mentions launch codes ({ctx.stage}, step {ctx.step})")
    return None


guarded_helper = AgentDefinition(
    name="guarded-helper",
    instructions="You help, carefully.",
    input_processors=[PiiRedaction()],
    output_processors=[CustomProcessorRef(name="no-launch-codes")],
)
