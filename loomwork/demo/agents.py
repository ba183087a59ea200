"""The demo agent: `assistant`, which uses the demo tools."""

from __future__ import annotations

from loomwork.agents.definitions import AgentDefinition


def demo_agents() -> list[AgentDefinition]:
    """The agents demo mode defines in code (visible to every tenant)."""
    return [
        AgentDefinition(
            name="assistant",
            description="A helpful assistant that adds numbers, counts words, saves notes.",
            instructions=(
                "You are a concise, helpful assistant. Use the tools for arithmetic "
                "and counting instead of guessing."
            ),
            tool_names=["add", "word_count", "save_note", "send_email"],
        )
    ]
