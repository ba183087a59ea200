"""The agents and tools that ship with Loomwork (used by the demo and the tests)."""

from __future__ import annotations

from pydantic import BaseModel, Field

from loomwork.agents.definitions import AgentDefinition, AgentRegistry
from loomwork.agents.tools import Tool, ToolContext, ToolRegistry


class AddArgs(BaseModel):
    numbers: list[float] = Field(description="The numbers to add", min_length=1)


async def add(args: AddArgs, ctx: ToolContext) -> dict[str, float]:
    return {"sum": sum(args.numbers)}


class WordCountArgs(BaseModel):
    text: str = Field(description="The text whose words to count")


async def word_count(args: WordCountArgs, ctx: ToolContext) -> dict[str, int]:
    return {"words": len(args.text.split())}


def builtin_tools() -> ToolRegistry:
    return ToolRegistry(
        [
            Tool("add", "Add numbers exactly.", AddArgs, add),
            Tool("word_count", "Count the words of a text.", WordCountArgs, word_count),
        ]
    )


def builtin_agents() -> AgentRegistry:
    return AgentRegistry(
        [
            AgentDefinition(
                name="assistant",
                description="A helpful assistant that can add numbers and count words.",
                instructions=(
                    "You are a concise, helpful assistant. Use the tools for arithmetic "
                    "and counting instead of guessing."
                ),
                tool_names=["add", "word_count"],
            )
        ]
    )
