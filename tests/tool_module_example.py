"""A tool module as a team writes one, named in LOOMWORK_TOOL_MODULES by
tests/test_tool_modules.py: its tools write to a notebook file the test reads back
(LOOMWORK_TEST_NOTEBOOK), and one reads an OAuth connection's API through `ctx.oauth`."""

from __future__ import annotations

import json
import os
from datetime import timedelta
from pathlib import Path
from typing import Any

from pydantic import BaseModel, Field

from loomwork.agents.definitions import AgentDefinition
from loomwork.tools import RetryPolicy, ToolContext, tool


def _notebook() -> Path:
    return Path(os.environ["LOOMWORK_TEST_NOTEBOOK"])


class NoteArgs(BaseModel):
    text: str = Field(description="What to write down", min_length=1)


class NoteWritten(BaseModel):
    line: int
    key: str


@tool(description="Write a line in the team's notebook.")
async def write_note(args: NoteArgs, ctx: ToolContext) -> NoteWritten:
    notebook = _notebook()
    entry = {
        "tenant": ctx.tenant,
        "key": ctx.idempotency_key,
        "text": args.text,
        "metadata": ctx.metadata,
    }
    with notebook.open("a") as out:
        out.write(json.dumps(entry) + "\n")
    return NoteWritten(line=len(notebook.read_text().splitlines()), key=ctx.idempotency_key)


class ProfileArgs(BaseModel):
    connection_id: str
    url: str


@tool
async def fetch_profile(args: ProfileArgs, ctx: ToolContext) -> dict[str, Any]:
    """The connected account's profile, read from the provider's API."""
    response = await ctx.oauth.request(args.connection_id, "GET", args.url)
    response.raise_for_status()
    result: dict[str, Any] = response.json()
    return result


class FlakyArgs(BaseModel):
    name: str


@tool(
    description="Fails on its first two attempts, then works.",
    retry=RetryPolicy(max_attempts=3, initial_interval=timedelta(milliseconds=100)),
    timeout=timedelta(seconds=20),
)
async def flaky(args: FlakyArgs, ctx: ToolContext) -> str:
    attempts = _notebook().with_suffix(f".{args.name}.attempts")
    count = int(attempts.read_text()) + 1 if attempts.exists() else 1
    attempts.write_text(str(count))
    if count < 3:
        raise RuntimeError(f"attempt {count} failed")
    return f"worked on attempt {count}"


@tool(
    description="Always fails; retried once.",
    retry=RetryPolicy(max_attempts=2, initial_interval=timedelta(milliseconds=100)),
)
async def broken(args: FlakyArgs, ctx: ToolContext) -> str:
    raise RuntimeError(f"{args.name} is broken for good")


notebook_keeper = AgentDefinition(
    name="notebook-keeper",
    description="Writes down what it is told.",
    instructions="Write down what you are told with write_note, then say so.",
    tool_names=["write_note", "flaky", "broken"],
)
