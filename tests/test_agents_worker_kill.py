"""A worker killed (SIGKILL) in the middle of a tool call: another worker finishes the run, and
the note-writing tool's effect happens once.

Run as a script, this module is the worker that dies: a real Loomwork worker whose `save_note`
writes the note, then hangs until it is killed.
"""

from __future__ import annotations

import asyncio
import os
import signal
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import replace
from pathlib import Path

from loomwork.agents.run_models import AgentRunRequest, RunOutcome
from loomwork.config import Settings
from loomwork.demo.tools import NoteTool, SaveNoteArgs
from loomwork.messages import NewMessage, Role, TextPart, ToolResultPart
from loomwork.testing import ScriptedModelServer, ScriptedToolCall, Turn
from loomwork.tools import Tool, ToolContext, ToolRegistry
from server.runtime import Runtime
from server.worker import build_worker
from tests.support import unique
from workflows.agent_run import AgentRunWorkflow

ROOT = Path(__file__).resolve().parent.parent


async def _doomed_worker() -> None:
    runtime = await Runtime.open(Settings(), migrate=False)
    notes = NoteTool(runtime.db)

    async def save_then_hang(args: SaveNoteArgs, ctx: ToolContext) -> dict[str, object]:
        saved = await notes.save(args, ctx)
        await asyncio.Event().wait()  # the write is done; the activity never completes
        return saved

    tools = [t for t in runtime.tools.all() if t.name != "save_note"]
    tools.append(Tool("save_note", "Save a note for the user.", SaveNoteArgs, save_then_hang))
    runtime = replace(runtime, tools=ToolRegistry(tools))
    await build_worker(runtime, identity="doomed-worker").run()


async def _notes(runtime: Runtime, run_id: str) -> list[str]:
    async with runtime.db.connection() as conn:
        cur = await conn.execute(
            "select id from notes where tenant_id = 'alpha' and idempotency_key like %s",
            (f"{run_id}:%",),
        )
        return [str(row["id"]) for row in await cur.fetchall()]


async def _written(runtime: Runtime, run_id: str, process: asyncio.subprocess.Process) -> str:
    for _ in range(60 * 20):
        notes = await _notes(runtime, run_id)
        if notes:
            return notes[0]
        if process.returncode is not None:
            raise AssertionError(f"the doomed worker exited early ({process.returncode})")
        await asyncio.sleep(0.05)
    raise AssertionError("the doomed worker never ran the tool")


@asynccontextmanager
async def doomed_worker(
    settings: Settings, model_server: ScriptedModelServer, queue: str
) -> AsyncIterator[asyncio.subprocess.Process]:
    """This module's worker as a process of its own polling `queue` (in demo mode, the
    scripted model): its `save_note` writes the note, then hangs. Killed on exit if alive."""
    env = {
        **os.environ,
        "DATABASE_URL": settings.database_url or "",
        "REDIS_URL": settings.redis_url or "",
        "TEMPORAL_ADDRESS": settings.temporal_address or "",
        "LOOMWORK_TASK_QUEUE": queue,
        "LOOMWORK_HOME": str(settings.home),
        "OPENAI_BASE_URL": model_server.base_url,
        "OPENAI_API_KEY": "test-key",
        "LOOMWORK_CHAT_MODEL": "scripted",
        "LOOMWORK_DEMO": "true",  # the `assistant` agent and its `save_note`
    }
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "tests.test_agents_worker_kill", cwd=ROOT, env=env
    )
    try:
        yield process
    finally:
        if process.returncode is None:
            process.kill()
            await process.wait()


@asynccontextmanager
async def rescuing(runtime: Runtime, settings: Settings, queue: str) -> AsyncIterator[None]:
    """A worker of this process on `queue`: it picks up what a killed worker left."""
    rescuer = build_worker(
        replace(runtime, settings=settings.model_copy(update={"task_queue": queue})),
        identity=unique("rescuer-worker"),
    )
    task = asyncio.create_task(rescuer.run())
    try:
        yield
    finally:
        await rescuer.shutdown()
        await task


async def kill(process: asyncio.subprocess.Process) -> None:
    process.send_signal(signal.SIGKILL)
    await process.wait()


async def test_worker_killed_mid_tool_writes_once(runtime, settings, model_server):
    queue = unique("kill-queue")
    model_server.requests.clear()
    model_server.set_script(
        [
            Turn(tool_calls=[ScriptedToolCall("save_note", {"title": "milk", "body": "buy 2"})]),
            Turn(text="Saved once."),
        ]
    )
    try:
        async with doomed_worker(settings, model_server, queue) as doomed:
            run_id = unique("run")
            handle = await runtime.temporal.start_workflow(
                AgentRunWorkflow.run,
                AgentRunRequest(
                    tenant="alpha",
                    run_id=run_id,
                    agent_name="assistant",
                    input_messages=[
                        NewMessage(role=Role.USER, parts=[TextPart(text="note: buy 2 milk")])
                    ],
                ),
                id=f"agent/assistant/alpha/{run_id}",
                task_queue=queue,
            )
            note_id = await _written(runtime, run_id, doomed)  # written, and the tool hangs
            await kill(doomed)
            # A second worker on the same queue picks the run up once the tool call times out.
            async with rescuing(runtime, settings, queue):
                outcome: RunOutcome = await asyncio.wait_for(handle.result(), 60)
    finally:
        model_server.set_script(None)

    assert outcome.status == "succeeded" and outcome.text == "Saved once."
    result = outcome.messages[1].parts[0]
    assert isinstance(result, ToolResultPart) and not result.is_error
    assert isinstance(result.result, dict) and str(result.result["note_id"]) == note_id
    assert await _notes(runtime, run_id) == [note_id]
    # The model heard the tool's result once, after the retry finished the call.
    assert len(model_server.requests) == 2
    assert note_id in model_server.requests[1].messages[-1]["content"]


if __name__ == "__main__":
    asyncio.run(_doomed_worker())
