"""A worker killed (SIGKILL) while a sub-agent run is in the middle of a tool call: another
worker finishes both runs; no model step runs twice, the tool's effect happens once, and the
top-level run's log holds each event once."""

from __future__ import annotations

import asyncio
from collections import Counter

from loomwork.agents.catalog import AgentCatalog
from loomwork.agents.events import (
    RunFinished,
    RunStarted,
    StepFinished,
    StepRetrying,
    TextDeltaEvent,
    ToolResultEvent,
    decode_event,
)
from loomwork.agents.run_models import AgentRunRequest, RunOutcome, agent_run_workflow_id
from loomwork.agents.run_start import event_log_key
from loomwork.agents.store import AgentStore
from loomwork.messages import NewMessage, Role, TextPart
from loomwork.testing import ChatRequest, ScriptedToolCall, Turn
from tests.support import unique
from tests.test_agents_worker_kill import doomed_worker, kill, rescuing
from workflows.agent_run import AgentRunWorkflow


async def _notes(runtime, call_id: str) -> list[str]:
    async with runtime.db.connection() as conn:
        cur = await conn.execute(
            "select id from notes where tenant_id = 'alpha' and idempotency_key like %s",
            (f"%:{call_id}",),
        )
        return [str(row["id"]) for row in await cur.fetchall()]


async def test_worker_killed_while_a_sub_agent_runs(runtime, settings, model_server):
    catalog = AgentCatalog(runtime.agents, AgentStore(runtime.db), runtime.tools)
    notary, lead = unique("notary"), unique("lead")
    await catalog.create(
        "alpha", {"name": notary, "instructions": notary, "tool_names": ["save_note"]}
    )
    await catalog.create(
        "alpha", {"name": lead, "instructions": lead, "tool_names": [f"agent:{notary}"]}
    )
    note_call = unique("call_note")

    def script(request: ChatRequest) -> Turn:
        as_lead = request.messages[0]["content"] == lead
        if not request.tool_results:
            if as_lead:
                return Turn(tool_calls=[ScriptedToolCall(notary, {"prompt": "note: milk"})])
            note = ScriptedToolCall("save_note", {"title": "milk", "body": "buy 2"}, id=note_call)
            return Turn(tool_calls=[note])
        return Turn(text="Lead: noted." if as_lead else "Noted once.")

    model_server.requests.clear()
    model_server.set_script(script)
    queue = unique("kill-sub-queue")
    run_id = unique("run")
    try:
        # The worker of tests/test_agents_worker_kill.py: its save_note writes, then hangs.
        async with doomed_worker(settings, model_server, queue) as doomed:
            handle = await runtime.temporal.start_workflow(
                AgentRunWorkflow.run,
                AgentRunRequest(
                    tenant="alpha",
                    run_id=run_id,
                    agent_name=lead,
                    input_messages=[NewMessage(role=Role.USER, parts=[TextPart(text="go")])],
                ),
                id=agent_run_workflow_id(lead, "alpha", run_id),
                task_queue=queue,
            )
            for _ in range(60 * 20):  # the note is written, and the sub-run's tool call hangs
                if await _notes(runtime, note_call):
                    break
                assert doomed.returncode is None, "the doomed worker exited early"
                await asyncio.sleep(0.05)
            await kill(doomed)
            async with rescuing(runtime, settings, queue):
                outcome: RunOutcome = await asyncio.wait_for(handle.result(), 90)
    finally:
        model_server.set_script(None)

    assert outcome.status == "succeeded" and outcome.text == "Lead: noted."
    assert len(await _notes(runtime, note_call)) == 1
    # No model step ran twice: the lead's two, the sub-run's two.
    assert len(model_server.requests) == 4
    # The top-level log: each event once (read checks the ids are dense), the sub-run's too.
    logged = await runtime.events.read(event_log_key("alpha", run_id), 0, count=1000)
    events = [decode_event(e.payload) for e in logged]
    assert not [e for e in events if isinstance(e, StepRetrying)]
    said_once = Counter(
        (
            e.run_path,
            e.type,
            e.step,
            e.result.tool_call_id if isinstance(e, ToolResultEvent) else "",
        )
        for e in events
        if isinstance(e, RunStarted | StepFinished | ToolResultEvent | RunFinished)
    )
    assert set(said_once.values()) == {1}
    paths = {e.run_path for e in events}
    assert len(paths) == 2 and "" in paths
    sub_text = "".join(e.delta for e in events if isinstance(e, TextDeltaEvent) and e.run_path)
    assert sub_text == "Noted once."
    assert isinstance(events[-1], RunFinished) and not events[-1].run_path
