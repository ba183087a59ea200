"""`loomwork agents …`: agents and their durable runs (AgentService)."""

from __future__ import annotations

from collections.abc import AsyncIterator

import typer
from rich.markup import escape
from rich.table import Table

from clients.cli.common import (
    FOLLOW_TIMEOUT,
    connection,
    connection_callback,
    keep_alive_line,
    parse_json_object,
    parse_statuses,
    pending_notice,
    print_items,
    print_json,
    proto_inline,
    run_with_client,
    short_time,
    status_markup,
    stdout_console,
    to_dict,
)
from clients.client import LoomworkClient
from protos.loomwork.v1 import agent_pb2, run_pb2

__all__ = ["agents_app", "describe_event", "register", "run_status"]

agents_app = typer.Typer(
    name="agents",
    help="Agents and their runs (AgentService).",
    no_args_is_help=True,
    callback=connection_callback,
)


def run_status(value: int) -> str:
    """An agent run's status as colored markup."""
    return status_markup(run_pb2.RunStatus, value, "RUN_STATUS_", WAITING="magenta")


def describe_event(event: agent_pb2.AgentRunEvent) -> str | None:
    """One line per event worth a line (text deltas are printed as they come instead)."""
    kind = event.WhichOneof("event")
    if kind == "tool_call":
        call = event.tool_call
        return f"tool call {escape(call.tool_name)} {escape(proto_inline(call.arguments))}"
    if kind == "tool_result":
        result = event.tool_result
        mark = "[red]error[/] " if result.is_error else ""
        return f"tool result {mark}{escape(proto_inline(result.result))[:160]}"
    if kind == "approval_requested":
        pending = event.approval_requested
        return (
            f"[magenta]waiting for approval[/] of {escape(pending.tool_name)} "
            f"(tool call {escape(pending.tool_call_id)}): `loomwork agents approve "
            f"{escape(event.run_id)} {escape(pending.tool_call_id)}`"
        )
    if kind == "tool_call_requested":
        requested = event.tool_call_requested
        return (
            f"[magenta]waiting for the caller's result[/] of client tool "
            f"{escape(requested.tool_name)} {escape(proto_inline(requested.arguments))} "
            f"(tool call {escape(requested.tool_call_id)})"
        )
    if kind == "approval_resolved":
        return f"approval resolved: approved={event.approval_resolved.approved}"
    if kind == "run_pending":
        return pending_notice(event.run_pending.task_queue, event.run_pending.waited)
    if kind == "step_retrying":
        retrying = event.step_retrying
        if retrying.attempt == 1:
            return "[yellow]model step restarted[/] (the text above is replaced)"
        wait = retrying.backoff.ToTimedelta().total_seconds()
        when = f" in {wait:g}s" if retrying.HasField("backoff") else ""
        return (
            f"[yellow]model step retrying[/] (attempt {retrying.attempt}{when}): "
            f"{escape(retrying.error.reason)} {escape(retrying.error.message)}"
        )
    if kind == "run_failed":
        return f"[red]run failed[/] {escape(event.run_failed.reason)}: " + escape(
            event.run_failed.message
        )
    if kind == "handoff":
        return f"handed over to agent {escape(event.handoff.to_agent)}"
    if kind == "blocked":
        return f"[red]blocked[/] by {escape(event.blocked.processor)}: " + escape(
            event.blocked.reason
        )
    if kind == "step_finished" and event.step_finished.reused:
        said = len(event.step_finished.messages)
        return f"[dim]step {event.step} reused from the forked run ({said} messages)[/]"
    if kind == "run_finished":
        return f"run finished {run_status(event.run_finished.status)}"
    return None


async def _follow(events: AsyncIterator[agent_pb2.AgentRunEvent]) -> None:
    """Prints a run's events as they come: the text as it streams, a line per other event."""
    out = stdout_console()
    in_text = False
    async for event in events:
        if event.HasField("text_delta") and not event.run_path:
            out.print(escape(event.text_delta.text), end="")
            in_text = True
            continue
        alive = event.HasField("keep_alive")  # not an event: no id of its own
        line = keep_alive_line(event.keep_alive) if alive else describe_event(event)
        if line is None:
            continue
        if in_text:
            out.print()
            in_text = False
        where = f"[dim]{escape(event.run_path)}[/] " if event.run_path else ""  # a sub-agent's
        out.print(f"  {line}" if alive else f"  #{event.event_id} {where}{line}")


@agents_app.command("list")
def agents_list(
    ctx: typer.Context, as_json: bool = typer.Option(False, "--json", help="Print JSON.")
) -> None:
    """List the agents this tenant can run (defined in code, or created by RPC)."""
    agents = run_with_client(connection(ctx), lambda c: c.agents.list_agents())

    def row(agent: agent_pb2.Agent) -> tuple[str, ...]:
        source = agent_pb2.AgentSource.Name(agent.source).removeprefix("AGENT_SOURCE_").lower()
        return escape(agent.name), source, ", ".join(agent.tool_names), escape(agent.description)

    table = Table("name", "source", "tools", "description", title="agents")
    print_items(agents, as_json, table, row)


@agents_app.command("show")
def agents_show(ctx: typer.Context, name: str = typer.Argument(..., help="Agent name.")) -> None:
    """Show one agent as JSON."""
    agent = run_with_client(connection(ctx), lambda c: c.agents.get_agent(name))
    print_json(to_dict(agent))


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
        stream = client.agents.stream(
            name,
            prompt,
            thread_id=thread,
            resource_id=resource,
            client_run_id=run_id,
            timeout=FOLLOW_TIMEOUT,
            keep_alives=True,
        )
        await _follow(stream)

    run_with_client(connection(ctx), work)


@agents_app.command("watch")
def agents_watch(
    ctx: typer.Context,
    run_id: str = typer.Argument(..., help="Run id."),
    after: int = typer.Option(0, "--after", help="Only events after this event id."),
) -> None:
    """Follow a run's events until it ends (reconnect with --after <last id>)."""
    run_with_client(
        connection(ctx),
        lambda c: _follow(
            c.agents.watch_run(
                run_id, after_event_id=after, timeout=FOLLOW_TIMEOUT, keep_alives=True
            )
        ),
    )


@agents_app.command("fork")
def agents_fork(
    ctx: typer.Context,
    run_id: str = typer.Argument(..., help="The run to fork."),
    from_step: int = typer.Argument(..., help="The first step to call the model for again."),
    new_id: str = typer.Option("", "--id", help="Client-chosen id of the new run."),
    follow: bool = typer.Option(False, "--follow", "-f", help="Follow the new run's events."),
    as_json: bool = typer.Option(False, "--json", help="Print JSON."),
) -> None:
    """Start a new run from a run's step: the steps before it are reused, not run again."""

    async def work(client: LoomworkClient) -> agent_pb2.AgentRun:
        run = await client.agents.fork_run(run_id, from_step, client_run_id=new_id)
        if as_json:
            print_json(to_dict(run))
        else:
            stdout_console().print(
                f"forked run [cyan]{escape(run_id)}[/] at step {from_step} as run "
                f"[cyan]{escape(run.id)}[/] ({run.reused_steps} steps reused)"
                + ("" if follow else f"; follow it with `loomwork agents watch {run.id}`")
            )
        if follow:
            await _follow(client.agents.watch_run(run.id, timeout=FOLLOW_TIMEOUT))
        return run

    run_with_client(connection(ctx), work)


@agents_app.command("get")
def agents_get(
    ctx: typer.Context,
    run_id: str = typer.Argument(..., help="Run id."),
    as_json: bool = typer.Option(False, "--json", help="Print JSON."),
) -> None:
    """Show a run: status, pending approvals, the answer once finished."""
    run = run_with_client(connection(ctx), lambda c: c.agents.get_run(run_id))
    if as_json:
        print_json(to_dict(run))
        return
    out = stdout_console()
    out.print(
        f"run [cyan]{escape(run.id)}[/] of {escape(run.agent_name)} is {run_status(run.status)}"
    )
    if run.forked_from:
        out.print(
            f"[dim]forked from run {escape(run.forked_from)} ({run.reused_steps} steps reused)[/]"
        )
    for pending in run.pending_approvals:
        arguments = escape(proto_inline(pending.arguments))
        until = ""
        if pending.HasField("expire_time"):
            until = f", rejected if undecided at {short_time(pending.expire_time)}"
        out.print(
            f"  waiting for approval: {escape(pending.tool_name)} {arguments}"
            f" (tool call {escape(pending.tool_call_id)}{until})"
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
    statuses = parse_statuses(run_pb2.RunStatus, "RUN_STATUS_", status)
    response = run_with_client(
        connection(ctx),
        lambda c: c.agents.list_runs(agent_name=agent, statuses=statuses, page_size=limit),
    )
    print_items(
        response.runs,
        as_json,
        Table("run", "agent", "status", "thread", "started", "waits on", title="agent runs"),
        lambda run: (
            escape(run.id),
            escape(run.agent_name),
            run_status(run.status),
            escape(run.thread_id),
            short_time(run.create_time),
            escape(_waits_on(run)),
        ),
    )


def _waits_on(run: agent_pb2.AgentRun) -> str:
    """What a WAITING run waits on: its approvals and client tool calls, by tool."""
    waits = [f"approval of {p.tool_name}" for p in run.pending_approvals]
    waits += [f"result of {c.tool_name}" for c in run.pending_tool_calls]
    return ", ".join(waits)


@agents_app.command("approve")
def agents_approve(
    ctx: typer.Context,
    run_id: str = typer.Argument(..., help="Run id."),
    tool_call_id: str = typer.Argument(..., help="The pending tool call."),
    arguments: str | None = typer.Option(None, "--arguments", help="Edited arguments (JSON)."),
) -> None:
    """Approve a pending tool call (optionally with edited arguments)."""
    edited = parse_json_object(arguments, "--arguments")
    run = run_with_client(
        connection(ctx), lambda c: c.agents.approve(run_id, tool_call_id, edited_arguments=edited)
    )
    stdout_console().print(f"approved {escape(tool_call_id)}; run is {run_status(run.status)}")


@agents_app.command("reject")
def agents_reject(
    ctx: typer.Context,
    run_id: str = typer.Argument(..., help="Run id."),
    tool_call_id: str = typer.Argument(..., help="The pending tool call."),
    reason: str = typer.Option("", "--reason", help="Told to the model."),
) -> None:
    """Reject a pending tool call; the model is told why."""
    run = run_with_client(connection(ctx), lambda c: c.agents.reject(run_id, tool_call_id, reason))
    stdout_console().print(f"rejected {escape(tool_call_id)}; run is {run_status(run.status)}")


def register(app: typer.Typer) -> None:
    """Adds `loomwork agents …` to the app."""
    app.add_typer(agents_app, name="agents")
