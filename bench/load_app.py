"""The application bench/load.py runs: one agent with no tools, whose answer the scripted
model streams (LOOMWORK_TOOL_MODULES names this module, found on PYTHONPATH)."""

from __future__ import annotations

from loomwork.agents.definitions import AgentDefinition

load_agent = AgentDefinition(
    name="load-agent",
    description="Answers; the bench's scripted model decides what.",
    instructions="Answer the question.",
)
