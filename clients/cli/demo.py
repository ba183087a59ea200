"""`loomwork demo`: walks the main flows against a running stack, printing what happens.

`run_demo` is also what `loomwork up --demo` runs once the stack is up. Each flow is a
`DemoSection`; they share a `DemoContext` (clients/cli/demo_context.py). The agents' newer
controls (guardrails, forks, client tools) have their sections in clients/cli/demo_agents.py.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import secrets
import uuid
from datetime import timedelta
from typing import Any

import grpc
import typer
from google.protobuf import json_format
from rich.console import Console
from rich.markup import escape
from rich.rule import Rule

from clients.agents import StreamedText
from clients.cli.common import (
    ADDRESS_OPTION,
    TOKEN_OPTION,
    iso_time,
    report_rpc_error,
    stderr_console,
    stdout_console,
    tls_credentials,
)
from clients.cli.demo_agents import AGENT_CONTROL_SECTIONS
from clients.cli.demo_context import DEMO_AGENT, DemoContext, DemoSection, message_id
from clients.cli.messages import message_table
from clients.cli.rag import ingestion_status
from clients.cli.threads import thread_details
from clients.cli.workflows import describe_event as describe_workflow_event
from clients.cli.workflows import workflow_status
from clients.client import LoomworkClient
from clients.messages import text_message, tool_call_message, tool_result_message
from protos.loomwork.v1 import message_pb2, rag_pb2, run_pb2

__all__ = ["DEMO_SECTIONS", "DemoContext", "DemoSection", "demo", "register", "run_demo"]


async def _demo_threads_and_messages(ctx: DemoContext) -> None:
    thread = await ctx.client.memory.create_thread(
        resource_id="demo-user", title="Weather chat", metadata={"source": "loomwork demo"}
    )
    ctx.thread_id = thread.id
    ctx.ok(f"created thread [cyan]{escape(thread.id)}[/] for resource demo-user")
    messages = [
        text_message(
            "system", "You are a helpful weather assistant.", id=message_id(ctx, "system")
        ),
        text_message("user", "What's the weather in Paris?", id=message_id(ctx, "user-1")),
        tool_call_message(
            "call_1",
            "get_weather",
            {"city": "Paris"},
            text="Let me check.",
            id=message_id(ctx, "assistant-1"),
        ),
        tool_result_message(
            "call_1",
            {"temperature_c": 18, "sky": "clear"},
            tool_name="get_weather",
            id=message_id(ctx, "tool-1"),
        ),
        text_message(
            "assistant", "It is 18 °C and clear in Paris.", id=message_id(ctx, "assistant-2")
        ),
    ]
    stored = await ctx.client.memory.append_messages(thread.id, messages)
    ctx.ok(f"appended {len(stored)} messages (system, user, assistant tool call, tool, assistant)")
    ctx.console.print(message_table(stored))


async def _demo_idempotency(ctx: DemoContext) -> None:
    before = (await ctx.client.memory.get_thread(ctx.thread_id)).message_count
    again = text_message("user", "What's the weather in Paris?", id=message_id(ctx, "user-1"))
    stored = await ctx.client.memory.append_messages(ctx.thread_id, [again])
    after = (await ctx.client.memory.get_thread(ctx.thread_id)).message_count
    if after == before:
        ctx.ok(
            f"appended message {escape(again.id)} again: the thread still has {after} messages "
            "— appends are idempotent by message id"
        )
    else:
        ctx.console.print(
            f"  [red]✗ message count went from {before} to {after}: not idempotent[/]"
        )
    ctx.note(f"the call returned the message as first stored, at {iso_time(stored[0].create_time)}")


async def _demo_reading(ctx: DemoContext) -> None:
    newest = await ctx.client.memory.list_messages(ctx.thread_id, last_n=3)
    ctx.console.print(message_table(list(newest.messages), title="newest 3 (last_n=3)"))
    page_token = ""
    page_number = 0
    while True:
        page = await ctx.client.memory.list_messages(
            ctx.thread_id, page_size=2, page_token=page_token
        )
        page_number += 1
        ids = ", ".join(m.id.rsplit(".", 1)[-1] for m in page.messages)
        ctx.ok(f"page {page_number} (page_size=2, oldest first): {escape(ids)}")
        if not page.next_page_token:
            break
        page_token = page.next_page_token


async def _demo_recall(ctx: DemoContext) -> None:
    query = "is it sunny in the French capital?"
    ctx.note(f"searching the thread by meaning: {query!r}")
    for _ in range(100):  # indexing runs on the worker a moment after the append
        found = await ctx.client.memory.search_messages(
            query, thread_id=ctx.thread_id, top_k=2, message_range=1
        )
        if len(found.hits) >= 2:
            break
        await asyncio.sleep(0.1)
    if not found.hits:
        ctx.console.print("  [red]✗ nothing found: is the worker running?[/]")
        return
    for hit in found.hits:
        text = " ".join(p.text.text for p in hit.message.parts if p.HasField("text"))
        ctx.ok(f"{hit.score:.2f}  {escape(text or hit.message.id)}")
    ctx.note(f"the best hit came with {len(found.hits[0].context)} neighbouring message(s)")


async def _demo_agent(ctx: DemoContext) -> None:
    prompt = "What is 17 + 25?"
    ctx.note(f"streaming agent 'assistant' on {prompt!r} (a durable Temporal run):")
    text = StreamedText()
    run_id, last_event = "", 0
    async for event in ctx.client.agents.stream(DEMO_AGENT, prompt):
        run_id, last_event = event.run_id, event.event_id
        text.add(event)
        kind = event.WhichOneof("event")
        if kind == "tool_call":
            args = json.dumps(json_format.MessageToDict(event.tool_call.arguments))
            ctx.ok(f"#{event.event_id} model calls tool {event.tool_call.tool_name}({args})")
        elif kind == "tool_result":
            result = json.dumps(json_format.MessageToDict(event.tool_result.result))
            ctx.ok(f"#{event.event_id} tool result: {escape(result)}")
        elif kind == "run_finished":
            ctx.ok(f"#{event.event_id} answer streamed: {escape(str(text))}")
        elif kind == "run_failed":
            ctx.console.print(f"  [red]✗ run failed: {escape(event.run_failed.message)}[/]")
    ctx.state["agent_run_id"] = run_id  # forked in "Agents: fork a run from a step"
    replay = [e.event_id async for e in ctx.client.agents.watch_run(run_id, after_event_id=2)]
    ctx.ok(
        f"run {escape(run_id)}: {last_event} numbered events; WatchRun after #2 replays "
        f"{len(replay)} (#{replay[0]}..#{replay[-1]})"
        if replay
        else f"run {run_id}"
    )
    ctx.note(f"find it in the Temporal UI as workflow agent/assistant/<tenant>/{run_id}")


async def _demo_approval(ctx: DemoContext) -> None:
    prompt = "Please email ada@example.com: the report is ready"
    ctx.note(f"send_email needs a person's approval; streaming {prompt!r}:")
    text = StreamedText()
    async for event in ctx.client.agents.stream(DEMO_AGENT, prompt):
        text.add(event)
        kind = event.WhichOneof("event")
        if kind == "approval_requested":
            pending = event.approval_requested
            to = pending.arguments["to"] if "to" in pending.arguments else "?"  # noqa: SIM401
            ctx.ok(f"#{event.event_id} run is WAITING: {pending.tool_name} to {escape(str(to))}")
            run = await ctx.client.agents.get_run(event.run_id)
            ctx.ok(
                f"GetRun: status {run_pb2.RunStatus.Name(run.status)}, "
                f"{len(run.pending_approvals)} pending approval"
            )
            await ctx.client.agents.approve(event.run_id, pending.tool_call_id)
            ctx.ok("approved by ResumeRun (a Temporal Update; a `resume` signal works too)")
        elif kind == "approval_resolved":
            ctx.ok(
                f"#{event.event_id} approval resolved: approved={event.approval_resolved.approved}"
            )
        elif kind == "tool_result":
            result = json.dumps(json_format.MessageToDict(event.tool_result.result))
            ctx.ok(f"#{event.event_id} tool result: {escape(result)}")
        elif kind == "run_finished":
            ctx.ok(f"#{event.event_id} answer: {escape(str(text))}")
        elif kind == "run_failed":
            ctx.console.print(f"  [red]✗ run failed: {escape(event.run_failed.message)}[/]")


async def _demo_workflows(ctx: DemoContext) -> None:
    """The three seed workflows: linear, branching, suspend/resume."""
    client = ctx.client
    order = {
        "customer": "Ada",
        "country": "DE",
        "lines": [{"sku": "loom", "quantity": 2, "unit_price": 50.0}],
    }
    ctx.note("order-pipeline (linear: validate → process → store → notify):")
    run = await client.workflows.start_run("order-pipeline", order)
    async for event in client.workflows.watch_run(run.id):
        ctx.ok(f"#{event.event_id} {describe_workflow_event(event)}")
    ctx.note("ForkRun: the same order again from its `notify` step (earlier steps reused):")
    fork = await client.workflows.fork_run(run.id, "notify")
    async for _ in client.workflows.watch_run(fork.id):
        pass
    fork = await client.workflows.get_run(fork.id)
    reused = [s.path for s in fork.steps if s.reused_from]
    ran = [s.path for s in fork.steps if not s.reused_from]
    ctx.ok(f"run {fork.id} is {workflow_status(fork.status)}: reused {reused}, ran {ran}")
    ctx.note("ticket-triage (branching): a billing ticket takes the billing path:")
    run = await client.workflows.start_run("ticket-triage", {"subject": "Wrong invoice"})
    async for event in client.workflows.watch_run(run.id):
        if event.HasField("step_skipped") or event.HasField("run_finished"):
            ctx.ok(f"#{event.event_id} {describe_workflow_event(event)}")
    ctx.note("expense-approval (suspend/resume): 250.00 needs a person:")
    run = await client.workflows.start_run(
        "expense-approval", {"employee": "Grace", "amount": 250.0, "reason": "conference"}
    )
    async for event in client.workflows.watch_run(run.id):
        ctx.ok(f"#{event.event_id} {describe_workflow_event(event)}")
        if event.HasField("step_suspended"):
            current = await client.workflows.get_run(run.id)
            ctx.ok(f"GetRun: status {workflow_status(current.status)}")
            await client.workflows.resume_run(
                run.id, "approve", {"approved": True, "approver": "Linus"}
            )
            ctx.ok("resumed by ResumeRun (a Temporal Update; a `resume` signal works too)")


async def _demo_schedules(ctx: DemoContext) -> None:
    """A Temporal Schedule starting the order pipeline every second; paused, then deleted."""
    client = ctx.client
    schedule_id = f"demo-orders-{secrets.token_hex(3)}"
    order = {"customer": "Ada", "lines": [{"sku": "loom", "quantity": 1, "unit_price": 50.0}]}
    await client.schedules.create(
        schedule_id, workflow_id="order-pipeline", data=order, interval=timedelta(seconds=1)
    )
    ctx.ok(f"schedule {schedule_id}: order-pipeline every second")
    runs: list[Any] = []
    for _ in range(100):  # ListRuns is Temporal visibility: it catches up within moments
        runs = list((await client.workflows.list_runs(schedule_id=schedule_id)).runs)
        if len(runs) >= 2:
            break
        await asyncio.sleep(0.2)
    ctx.ok(f"ListRuns by schedule: {len(runs)} runs started by {schedule_id}")
    await client.schedules.pause(schedule_id)
    ctx.ok("paused (PauseSchedule); TriggerSchedule would still start one at once")
    await client.schedules.delete(schedule_id)
    ctx.ok("deleted; the runs it started stay")


_DEMO_DOCUMENTS = {
    "looms.md": "# Looms\n\nA loom weaves thread into cloth. The warp threads run lengthwise "
    "and the weft crosses them.\n\n## Care\n\nOil the shuttle race every spring.",
    "temporal.txt": "Temporal keeps the state of every durable run. When a worker "
    "crashes, another worker retries the activity and the run goes on.",
    "pgvector.txt": "pgvector stores embeddings in PostgreSQL and finds the nearest ones "
    "with an HNSW index, filtered by tenant.",
}


async def _demo_rag(ctx: DemoContext) -> None:
    """An index, a durable ingestion with progress, a hybrid query and a cited answer."""
    client = ctx.client
    index = f"demo_{uuid.uuid4().hex[:8]}"
    await client.rag.create_index(index, description="loomwork demo")
    ctx.ok(f"created index [cyan]{index}[/] (all-MiniLM-L6-v2, 384 dimensions, cosine)")
    try:
        documents = [
            rag_pb2.DocumentInput(document_id=name.split(".")[0], file_name=name, text=text)
            for name, text in _DEMO_DOCUMENTS.items()
        ]
        ingestion = await client.rag.ingest_documents(index, documents)
        async for event in client.rag.watch_ingestion(ingestion.id):
            if event.HasField("finished"):
                done = event.finished
                ctx.ok(
                    f"ingestion {escape(done.id)} {ingestion_status(done.status)}: "
                    f"{done.progress.documents_done} documents, "
                    f"{done.progress.chunks_done} chunks embedded and stored"
                )
        retrieval = rag_pb2.RetrievalOptions(top_k=2, mode=rag_pb2.SEARCH_MODE_HYBRID)
        question = "What happens when a worker crashes?"
        results = await client.rag.query(index, question, retrieval)
        best = results[0]
        ctx.ok(
            f"query {escape(repr(question))}: best match {escape(best.chunk.document_id)} "
            f"(score {best.score:.2f})"
        )
        text: list[str] = []
        asked = "What does a loom do?"
        ctx.note(f"asking {asked!r} (a cited answer, streamed):")
        async for answer_event in client.rag.answer(index, asked, retrieval):
            if answer_event.HasField("text_delta"):
                text.append(answer_event.text_delta.text)
            elif answer_event.HasField("citation"):
                citation = answer_event.citation
                ctx.ok(f"citation [{citation.number}] → {escape(citation.document_id)}")
            elif answer_event.HasField("finished"):
                ctx.ok(f"answer: {escape(''.join(text))}")
    finally:
        await client.rag.delete_index(index)
        ctx.note(f"deleted index {index}")


async def _demo_update(ctx: DemoContext) -> None:
    thread = await ctx.client.memory.update_thread(
        ctx.thread_id,
        title="Weather in Paris",
        metadata={"source": "loomwork demo", "city": "Paris"},
    )
    ctx.ok(f"title is now {escape(repr(thread.title))}")
    ctx.console.print(thread_details(thread))


async def _demo_bad_input(ctx: DemoContext) -> None:
    no_role = message_pb2.Message(
        parts=[message_pb2.Part(text=message_pb2.TextPart(text="who am I?"))]
    )
    ctx.note("appending a message whose role is unspecified:")
    await ctx.expect_error(
        ctx.client.memory.append_messages(ctx.thread_id, [no_role]),
        grpc.StatusCode.INVALID_ARGUMENT,
    )
    ctx.note("reading a thread that does not exist:")
    await ctx.expect_error(
        ctx.client.memory.get_thread("thr_does_not_exist"), grpc.StatusCode.NOT_FOUND
    )


async def _demo_tenants(ctx: DemoContext) -> None:
    if not ctx.other_token:
        ctx.note("skipped: pass --other-token <a token of another tenant> to see isolation")
        return
    async with LoomworkClient(
        ctx.address, ctx.other_token, timeout=ctx.client.timeout, credentials=tls_credentials()
    ) as other:
        ctx.note("another tenant reads the thread:")
        await ctx.expect_error(other.memory.get_thread(ctx.thread_id), grpc.StatusCode.NOT_FOUND)
        page = await other.memory.list_threads(resource_id="demo-user")
        visible = [t.id for t in page.threads]
        if ctx.thread_id in visible:
            ctx.console.print("  [red]✗ the other tenant lists the thread[/]")
        else:
            ctx.ok("the other tenant's list of demo-user threads does not include it")


async def _demo_delete(ctx: DemoContext) -> None:
    await ctx.client.memory.delete_thread(ctx.thread_id)
    ctx.ok(f"deleted thread [cyan]{escape(ctx.thread_id)}[/] and its messages")
    await ctx.expect_error(ctx.client.memory.get_thread(ctx.thread_id), grpc.StatusCode.NOT_FOUND)
    ctx.thread_id = ""


# The demo's sections, in the order it runs them.
DEMO_SECTIONS: list[DemoSection] = [
    DemoSection("Memory: a thread and its messages", _demo_threads_and_messages),
    DemoSection("Memory: idempotent appends", _demo_idempotency),
    DemoSection("Memory: reading messages back", _demo_reading),
    DemoSection("Memory: semantic recall", _demo_recall),
    DemoSection("Memory: updating a thread", _demo_update),
    DemoSection("Agents: a durable run with a tool, streamed", _demo_agent),
    DemoSection("Agents: a tool call waits for approval", _demo_approval),
    *AGENT_CONTROL_SECTIONS,
    DemoSection("Workflows: linear, branching, suspend/resume", _demo_workflows),
    DemoSection("Workflows: a schedule", _demo_schedules),
    DemoSection("RAG: ingest, search, a cited answer", _demo_rag),
    DemoSection("Errors: bad input names the field", _demo_bad_input),
    DemoSection("Tenants: isolation", _demo_tenants),
    DemoSection("Memory: deleting the thread", _demo_delete),
]


async def run_demo(
    address: str,
    token: str,
    *,
    other_token: str | None = None,
    console: Console | None = None,
    sections: list[DemoSection] | None = None,
) -> None:
    """Walks the main flows against a running stack, printing what happens.

    gRPC errors propagate (the `demo` command reports them); the demo thread is deleted
    even when a section fails.
    """
    console = console or Console(highlight=False)
    console.print(f"[bold]Loomwork demo[/] against {escape(address)}")
    async with LoomworkClient(address, token or None, credentials=tls_credentials()) as client:
        if not any(agent.name == DEMO_AGENT for agent in await client.agents.list_agents()):
            raise DemoModeOff(
                f"the stack at {address} is not in demo mode (no agent {DEMO_AGENT!r}): "
                "start it with `loomwork up --demo`, or set LOOMWORK_DEMO=true on its servers "
                "and workers"
            )
        ctx = DemoContext(client, console, address, token, other_token=other_token or None)
        try:
            for section in DEMO_SECTIONS if sections is None else sections:
                console.print(Rule(f"[bold]{escape(section.title)}[/]", align="left"))
                await section.run(ctx)
        finally:
            if ctx.thread_id:  # a section failed before the delete section: clean up
                with contextlib.suppress(grpc.aio.AioRpcError):
                    await client.memory.delete_thread(ctx.thread_id, timeout=5)
    console.print(Rule())
    console.print("[bold green]demo finished[/]")


class DemoModeOff(Exception):
    """The stack the demo runs against does not serve the demo's agents and tools."""


def demo(
    address: str = ADDRESS_OPTION,
    token: str = TOKEN_OPTION,
    other_token: str | None = typer.Option(
        None,
        "--other-token",
        envvar="LOOMWORK_OTHER_TOKEN",
        help="A token of another tenant, to show that it cannot see the demo's data.",
    ),
) -> None:
    """Walk the main flows against a running stack (`loomwork up`) and print what happens."""
    try:
        asyncio.run(run_demo(address, token, other_token=other_token, console=stdout_console()))
    except grpc.aio.AioRpcError as err:
        report_rpc_error(err, address, stderr_console())
        raise typer.Exit(1) from None
    except DemoModeOff as err:
        stderr_console().print(f"[bold red]error:[/] {escape(str(err))}")
        raise typer.Exit(1) from None


def register(app: typer.Typer) -> None:
    """Adds `loomwork demo` to the app."""
    app.command("demo")(demo)
