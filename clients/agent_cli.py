"""`loomwork agents …`: agents and their durable runs (AgentService)."""

from __future__ import annotations

import typer
from rich.markup import escape
from rich.table import Table

from clients.cli import (
    _connection,
    _connection_callback,
    _json_object,
    _out,
    _pending_notice,
    _print_json,
    _proto_inline,
    _run,
    _short_time,
    _status_markup,
    _statuses,
    to_dict,
)
from clients.client import LoomworkClient
from protos.loomwork.v1 import agent_pb2, run_pb2

agents_app = typer.Typer(
    name="agents",
    help="Agents and their runs (AgentService).",
    no_args_is_help=True,
    callback=_connection_callback,
)


def _status(value: int) -> str:
    return _status_markup(run_pb2.RunStatus, value, "RUN_STATUS_", WAITING="magenta")


def describe_event(event: agent_pb2.AgentRunEvent) -> str | None:
    """One line per event worth a line (text deltas are printed as they come instead)."""
    kind = event.WhichOneof("event")
    if kind == "tool_call":
        call = event.tool_call
        return f"tool call {escape(call.tool_name)} {escape(_proto_inline(call.arguments))}"
    if kind == "tool_result":
        result = event.tool_result
        mark = "[red]error[/] " if result.is_error else ""
        return f"tool result {mark}{escape(_proto_inline(result.result))[:160]}"
    if kind == "approval_requested":
        pending = event.approval_requested
        return (
            f"[magenta]waiting for approval[/] of {escape(pending.tool_name)} "
            f"(tool call {escape(pending.tool_call_id)}): `loomwork agents approve "
            f"{escape(event.run_id)} {escape(pending.tool_call_id)}`"
        )
    if kind == "approval_resolved":
        return f"approval resolved: approved={event.approval_resolved.approved}"
    if kind == "run_pending":
        return _pending_notice(event.run_pending.task_queue, event.run_pending.waited)
    if kind == "step_retrying":
        if event.step_retrying.attempt == 1:
            return "[yellow]model step restarted[/] (the text above is replaced)"
        return f"[yellow]model step retrying[/]: {escape(event.step_retrying.error.message)}"
    if kind == "run_failed":
        return f"[red]run failed[/] {escape(event.run_failed.reason)}: " + escape(
            event.run_failed.message
        )
    if kind == "run_finished":
        return f"run finished {_status(event.run_finished.status)}"
    return None


async def _follow(client: LoomworkClient, events: object) -> None:
    out = _out()
    in_text = False
    async for event in events:  # type: ignore[attr-defined]
        if event.HasField("text_delta"):
            out.print(escape(event.text_delta.text), end="")
            in_text = True
            continue
        line = describe_event(event)
        if line is None:
            continue
        if in_text:
            out.print()
            in_text = False
        out.print(f"  #{event.event_id} {line}")


@agents_app.command("list")
def agents_list(
    ctx: typer.Context, as_json: bool = typer.Option(False, "--json", help="Print JSON.")
) -> None:
    """List the agents this tenant can run (defined in code, or created by RPC)."""
    agents = _run(_connection(ctx), lambda c: c.list_agents())
    if as_json:
        _print_json([to_dict(a) for a in agents])
        return
    table = Table(title="agents")
    for column in ("name", "source", "tools", "description"):
        table.add_column(column)
    for agent in agents:
        source = agent_pb2.AgentSource.Name(agent.source).removeprefix("AGENT_SOURCE_").lower()
        table.add_row(
            escape(agent.name), source, ", ".join(agent.tool_names), escape(agent.description)
        )
    _out().print(table)


@agents_app.command("show")
def agents_show(ctx: typer.Context, name: str = typer.Argument(..., help="Agent name.")) -> None:
    """Show one agent as JSON."""
    agent = _run(_connection(ctx), lambda c: c.get_agent(name))
    _print_json(to_dict(agent))


@agents_app.command("run")
def agents_run(
    ctx: typer.Context,
    name: str = typer.Argument(..., help="Agent name."),
    prompt: str = typer.Argument(..., help="What to ask."),
    thread: str = typer.Option("", "--thread", help="Thread to continue."),
    resource: str = typer.Option("", "--resource", help="Resource (user) the run is for."),
    run_id: str = typer.Option("", "--id", help="Client-chosen run id (idempotency key)."),
) -> None:
    """Run an agent, streaming its answer, tool calls and approvals as they happen."""

    async def work(client: LoomworkClient) -> None:
        stream = client.stream(
            name, prompt, thread_id=thread, resource_id=resource, client_run_id=run_id, timeout=None
        )
        await _follow(client, stream)

    _run(_connection(ctx), work)


@agents_app.command("watch")
def agents_watch(
    ctx: typer.Context,
    run_id: str = typer.Argument(..., help="Run id."),
    after: int = typer.Option(0, "--after", help="Only events after this event id."),
) -> None:
    """Follow a run's events until it ends (reconnect with --after <last id>)."""
    _run(
        _connection(ctx),
        lambda c: _follow(c, c.watch_run(run_id, after_event_id=after, timeout=None)),
    )


@agents_app.command("get")
def agents_get(
    ctx: typer.Context,
    run_id: str = typer.Argument(..., help="Run id."),
    as_json: bool = typer.Option(False, "--json", help="Print JSON."),
) -> None:
    """Show a run: status, pending approvals, the answer once finished."""
    run = _run(_connection(ctx), lambda c: c.get_run(run_id))
    if as_json:
        _print_json(to_dict(run))
        return
    out = _out()
    out.print(f"run [cyan]{escape(run.id)}[/] of {escape(run.agent_name)} is {_status(run.status)}")
    for pending in run.pending_approvals:
        arguments = escape(_proto_inline(pending.arguments))
        out.print(
            f"  waiting for approval: {escape(pending.tool_name)} {arguments}"
            f" (tool call {escape(pending.tool_call_id)})"
        )
    if run.output.text:
        out.print(f"  answer: {escape(run.output.text)}")
    if run.HasField("error"):
        out.print(f"  [red]error[/] {escape(run.error.reason)}: {escape(run.error.message)}")
    out.print(f"[dim]Temporal workflow id: {escape(run.temporal_workflow_id)}[/]")


@agents_app.command("runs")
def agents_runs(
    ctx: typer.Context,
    agent: str = typer.Option("", "--agent", help="Only runs of this agent."),
    status: list[str] = typer.Option(  # noqa: B008
        [], "--status", help="Only runs in this status (repeatable), e.g. waiting."
    ),
    limit: int = typer.Option(20, "--limit", "-n"),
    as_json: bool = typer.Option(False, "--json", help="Print JSON."),
) -> None:
    """List runs (Temporal visibility)."""
    statuses = _statuses(run_pb2.RunStatus, "RUN_STATUS_", status)
    response = _run(
        _connection(ctx),
        lambda c: c.list_runs(agent_name=agent, statuses=statuses, page_size=limit),
    )
    if as_json:
        _print_json([to_dict(r) for r in response.runs])
        return
    table = Table(title="agent runs")
    for column in ("run", "agent", "status", "thread", "started"):
        table.add_column(column)
    for run in response.runs:
        table.add_row(
            escape(run.id),
            escape(run.agent_name),
            _status(run.status),
            escape(run.thread_id),
            _short_time(run.create_time),
        )
    _out().print(table)


@agents_app.command("approve")
def agents_approve(
    ctx: typer.Context,
    run_id: str = typer.Argument(..., help="Run id."),
    tool_call_id: str = typer.Argument(..., help="The pending tool call."),
    arguments: str | None = typer.Option(None, "--arguments", help="Edited arguments (JSON)."),
) -> None:
    """Approve a pending tool call (optionally with edited arguments)."""
    edited = _json_object(arguments, "--arguments")
    run = _run(_connection(ctx), lambda c: c.approve(run_id, tool_call_id, edited_arguments=edited))
    _out().print(f"approved {escape(tool_call_id)}; run is {_status(run.status)}")


@agents_app.command("reject")
def agents_reject(
    ctx: typer.Context,
    run_id: str = typer.Argument(..., help="Run id."),
    tool_call_id: str = typer.Argument(..., help="The pending tool call."),
    reason: str = typer.Option("", "--reason", help="Told to the model."),
) -> None:
    """Reject a pending tool call; the model is told why."""
    run = _run(_connection(ctx), lambda c: c.reject(run_id, tool_call_id, reason))
    _out().print(f"rejected {escape(tool_call_id)}; run is {_status(run.status)}")
