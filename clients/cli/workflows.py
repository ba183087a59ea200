"""`loomwork workflows …`: registered workflow definitions and their runs (WorkflowService)."""

from __future__ import annotations

from typing import Any

import typer
from rich.markup import escape
from rich.table import Table
from rich.tree import Tree

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
from protos.loomwork.v1 import workflow_pb2

__all__ = ["describe_event", "register", "workflow_status", "workflows_app"]

workflows_app = typer.Typer(
    name="workflows",
    help="Workflow definitions and runs (WorkflowService).",
    no_args_is_help=True,
    callback=connection_callback,
)


def workflow_status(value: int) -> str:
    """A workflow run's status as colored markup."""
    return status_markup(
        workflow_pb2.WorkflowRunStatus,
        value,
        "WORKFLOW_RUN_STATUS_",
        SUSPENDED="magenta",
        WAITING="blue",
    )


def _step_status(value: int) -> str:
    return workflow_pb2.WorkflowStepStatus.Name(value).removeprefix("WORKFLOW_STEP_STATUS_")


def _kind(value: int) -> str:
    return workflow_pb2.WorkflowStepKind.Name(value).removeprefix("WORKFLOW_STEP_KIND_").lower()


def _step_tree(parent: Tree, steps: Any) -> None:
    for step in steps:
        label = f"[bold]{escape(step.id)}[/] [dim]{_kind(step.kind)}[/]"
        if step.condition:
            label += f" [dim]when {escape(step.condition)}[/]"
        if step.default_branch:
            label += " [dim](default)[/]"
        if step.HasField("resume_schema"):
            label += " [magenta]can suspend[/]"
        if step.description:
            label += f" — {escape(step.description)}"
        _step_tree(parent.add(label), step.children)


def _run_table(run: workflow_pb2.WorkflowRun) -> Table:
    table = Table(title=f"run {run.id} — {run.workflow_id} v{run.workflow_version}")
    for column in ("step", "kind", "status", "attempts", "output / payload"):
        table.add_column(column)
    for step in run.steps:
        detail = ""
        if step.HasField("output"):
            detail = proto_inline(step.output)
        elif step.HasField("suspend_payload"):
            detail = "waiting for: " + proto_inline(step.suspend_payload)
        elif step.HasField("error"):
            detail = f"{step.error.reason}: {step.error.message}"
        status = _step_status(step.status)
        if step.reused_from:
            status += f" [dim](reused from {escape(step.reused_from)})[/]"
        table.add_row(
            escape(step.path),
            _kind(step.kind),
            status,
            str(step.attempts or ""),
            escape(detail[:120]),
        )
    return table


def _print_run(run: workflow_pb2.WorkflowRun) -> None:
    out = stdout_console()
    out.print(f"run [cyan]{escape(run.id)}[/] is {workflow_status(run.status)}")
    if run.forked_from:
        out.print(f"[dim]forked from run {escape(run.forked_from)}[/]")
    out.print(_run_table(run))
    if run.HasField("output"):
        out.print(f"output: {escape(proto_inline(run.output))}")
    if run.HasField("error"):
        out.print(f"[red]error[/] {escape(run.error.reason)}: {escape(run.error.message)}")
    out.print(f"[dim]Temporal workflow id: {escape(run.temporal_workflow_id)}[/]")


def _event_line(event: workflow_pb2.WorkflowRunEvent) -> str:
    """`#id` and the event, or a keep-alive's dim line (not an event: no id of its own)."""
    if event.HasField("keep_alive"):
        return keep_alive_line(event.keep_alive)
    return f"#{event.event_id} {describe_event(event)}"


def describe_event(event: workflow_pb2.WorkflowRunEvent) -> str:
    """One line per run event, for humans."""
    kind = event.WhichOneof("event") or "?"
    if kind == "run_started":
        return f"run started ({event.run_started.workflow_id})"
    if kind == "run_finished":
        finished = event.run_finished
        output = escape(proto_inline(finished.output))
        return f"run finished {workflow_status(finished.status)} {output}"
    if kind == "run_failed":
        return f"[red]run failed[/] {escape(event.run_failed.reason)}: " + escape(
            event.run_failed.message
        )
    if kind == "run_pending":
        return pending_notice(event.run_pending.task_queue, event.run_pending.waited)
    step = getattr(event, kind)
    text = f"{kind.removeprefix('step_')} [bold]{escape(step.path)}[/]"
    if kind == "step_succeeded":
        text += f" → {escape(proto_inline(step.output))[:100]}"
    elif kind == "step_suspended":
        text += f" waiting for: {escape(proto_inline(step.suspend_payload))}"
    elif kind in ("step_retrying", "step_failed"):
        text += f" ({escape(step.error.reason)}: {escape(step.error.message)})"
    return text


@workflows_app.command("list")
def workflows_list(
    ctx: typer.Context, as_json: bool = typer.Option(False, "--json", help="Print JSON.")
) -> None:
    """List the registered workflow definitions."""
    workflows = run_with_client(connection(ctx), lambda c: c.workflows.list_workflows())
    print_items(
        workflows,
        as_json,
        Table("id", "version", "steps", "description", title="workflows"),
        lambda workflow: (
            escape(workflow.id),
            workflow.version,
            " → ".join(step.id for step in workflow.steps),
            escape(workflow.description),
        ),
    )


@workflows_app.command("show")
def workflows_show(
    ctx: typer.Context,
    workflow_id: str = typer.Argument(..., help="Workflow id."),
    as_json: bool = typer.Option(False, "--json", help="Print JSON (with the schemas)."),
) -> None:
    """Show a workflow's steps (and, with --json, its schemas)."""
    workflow = run_with_client(connection(ctx), lambda c: c.workflows.get_workflow(workflow_id))
    if as_json:
        print_json(to_dict(workflow))
        return
    tree = Tree(f"[bold]{escape(workflow.id)}[/] v{workflow.version}")
    _step_tree(tree, workflow.steps)
    stdout_console().print(tree)


@workflows_app.command("start")
def workflows_start(
    ctx: typer.Context,
    workflow_id: str = typer.Argument(..., help="Workflow id."),
    data: str = typer.Option("{}", "--input", "-i", help="The run input, a JSON object."),
    run_id: str = typer.Option("", "--id", help="Client-chosen run id (idempotency key)."),
    watch: bool = typer.Option(False, "--watch", "-w", help="Follow the run's events."),
    as_json: bool = typer.Option(False, "--json", help="Print JSON."),
) -> None:
    """Start a run."""
    payload = parse_json_object(data, "--input") or {}

    async def work(client: LoomworkClient) -> workflow_pb2.WorkflowRun:
        run = await client.workflows.start_run(workflow_id, payload, client_run_id=run_id)
        if watch and not as_json:
            stdout_console().print(f"started run [cyan]{escape(run.id)}[/]")
            async for event in client.workflows.watch_run(
                run.id, timeout=FOLLOW_TIMEOUT, keep_alives=True
            ):
                stdout_console().print(f"  {_event_line(event)}")
            run = await client.workflows.get_run(run.id)
        return run

    run = run_with_client(connection(ctx), work)
    if as_json:
        print_json(to_dict(run))
    elif watch:
        stdout_console().print(f"run [cyan]{escape(run.id)}[/] is {workflow_status(run.status)}")
    else:
        stdout_console().print(
            f"started run [cyan]{escape(run.id)}[/]; follow it with "
            f"`loomwork workflows watch {run.id}`"
        )


@workflows_app.command("fork")
def workflows_fork(
    ctx: typer.Context,
    run_id: str = typer.Argument(..., help="The run to fork."),
    from_step: str = typer.Argument(..., help="The fork point: a step id or a step path."),
    data: str = typer.Option("", "--input", "-i", help="A new input (JSON object)."),
    new_id: str = typer.Option("", "--id", help="Client-chosen id of the new run."),
    as_json: bool = typer.Option(False, "--json", help="Print JSON."),
) -> None:
    """Start a new run from a run's step: the steps before it are reused, not run again."""
    payload = parse_json_object(data, "--input") if data else None
    run = run_with_client(
        connection(ctx),
        lambda c: c.workflows.fork_run(run_id, from_step, payload, client_run_id=new_id),
    )
    if as_json:
        print_json(to_dict(run))
    else:
        stdout_console().print(
            f"forked run [cyan]{escape(run_id)}[/] at {escape(from_step)} as run "
            f"[cyan]{escape(run.id)}[/]; follow it with `loomwork workflows watch {run.id}`"
        )


@workflows_app.command("get")
def workflows_get(
    ctx: typer.Context,
    run_id: str = typer.Argument(..., help="Run id."),
    as_json: bool = typer.Option(False, "--json", help="Print JSON."),
) -> None:
    """Show a run with each step execution."""
    run = run_with_client(connection(ctx), lambda c: c.workflows.get_run(run_id))
    if as_json:
        print_json(to_dict(run))
    else:
        _print_run(run)


@workflows_app.command("runs")
def workflows_runs(
    ctx: typer.Context,
    workflow_id: str = typer.Option("", "--workflow", help="Only runs of this workflow."),
    status: list[str] = typer.Option(  # noqa: B008
        [], "--status", help="Only runs in this status (repeatable), e.g. suspended."
    ),
    schedule_id: str = typer.Option("", "--schedule", help="Only runs this schedule started."),
    limit: int = typer.Option(20, "--limit", "-n", help="How many runs."),
    as_json: bool = typer.Option(False, "--json", help="Print JSON."),
) -> None:
    """List runs, newest first."""
    statuses = parse_statuses(workflow_pb2.WorkflowRunStatus, "WORKFLOW_RUN_STATUS_", status)
    response = run_with_client(
        connection(ctx),
        lambda c: c.workflows.list_runs(
            workflow_id=workflow_id, statuses=statuses, schedule_id=schedule_id, page_size=limit
        ),
    )
    print_items(
        response.runs,
        as_json,
        Table("run", "workflow", "status", "started", "waits on", title="workflow runs"),
        lambda run: (
            escape(run.id),
            escape(run.workflow_id),
            workflow_status(run.status),
            short_time(run.create_time),
            escape(", ".join(step.path for step in run.steps)),  # listed: the steps it waits on
        ),
    )


@workflows_app.command("resume")
def workflows_resume(
    ctx: typer.Context,
    run_id: str = typer.Argument(..., help="Run id."),
    step_id: str = typer.Argument(..., help="The suspended step (id, or path like approve[2])."),
    data: str = typer.Option("{}", "--data", "-d", help="Resume data, a JSON object."),
) -> None:
    """Resume a suspended step."""
    payload = parse_json_object(data, "--data") or {}
    run = run_with_client(
        connection(ctx), lambda c: c.workflows.resume_run(run_id, step_id, payload)
    )
    stdout_console().print(f"resumed {escape(step_id)}; run is {workflow_status(run.status)}")


@workflows_app.command("cancel")
def workflows_cancel(
    ctx: typer.Context,
    run_id: str = typer.Argument(..., help="Run id."),
    reason: str = typer.Option("", "--reason"),
) -> None:
    """Cancel a run."""
    run = run_with_client(connection(ctx), lambda c: c.workflows.cancel_run(run_id, reason))
    stdout_console().print(f"cancel requested; run is {workflow_status(run.status)}")


@workflows_app.command("watch")
def workflows_watch(
    ctx: typer.Context,
    run_id: str = typer.Argument(..., help="Run id."),
    after: int = typer.Option(0, "--after", help="Only events after this event id."),
) -> None:
    """Follow a run's events until it ends (reconnect with --after <last id>)."""

    async def work(client: LoomworkClient) -> None:
        async for event in client.workflows.watch_run(
            run_id, after_event_id=after, timeout=FOLLOW_TIMEOUT, keep_alives=True
        ):
            stdout_console().print(_event_line(event))

    run_with_client(connection(ctx), work)


def register(app: typer.Typer) -> None:
    """Adds `loomwork workflows …` to the app."""
    app.add_typer(workflows_app, name="workflows")
