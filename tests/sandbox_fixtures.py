"""Temporal workflows for the tests of the workflow sandbox (each run imports this module
into its sandbox, as it does Loomwork's own workflows in strict mode)."""

from __future__ import annotations

from datetime import datetime, timedelta

from pydantic import BaseModel
from temporalio import activity, workflow


class Note(BaseModel):
    text: str
    tags: list[str]


@activity.defn(name="sandbox_echo")
async def echo(note: Note) -> Note:
    return Note(text=note.text.upper(), tags=[*note.tags, "echoed"])


@workflow.defn(name="SandboxEcho")
class SandboxEcho:
    """A pydantic payload in, through an activity and back."""

    @workflow.run
    async def run(self, note: Note) -> Note:
        return await workflow.execute_activity(
            echo, note, start_to_close_timeout=timedelta(seconds=30)
        )


@workflow.defn(name="SandboxClock")
class SandboxClock:
    """Reads the system clock, which workflow code must not (the sandbox refuses it)."""

    @workflow.run
    async def run(self) -> str:
        return datetime.now().isoformat()
