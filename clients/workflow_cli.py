"""`loomwork workflows …`: registered workflow definitions and their runs (WorkflowService)."""

from __future__ import annotations

from typing import Any

import typer
from rich.markup import escape
from rich.table import Table
from rich.tree import Tree

from clients.cli import (
    DemoContext,
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
from protos.loomwork.v1 import workflow_pb2

workflows_app = typer.Typer(
    name="workflows",
    help="Workflow definitions and runs (WorkflowService).",
    no_args_is_help=True,
    callback=_connection_callback,
)


def _status(value: int) -> str:
    return _status_markup(
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
            detail = _proto_inline(step.output)
        elif step.HasField("suspend_payload"):
            detail = "waiting for: " + _proto_inline(step.suspend_payload)
        elif step.HasField("error"):
            detail = f"{step.error.reason}: {step.error.message}"
        table.add_row(
            escape(step.path),
            _kind(step.kind),
            _step_status(step.status),
            str(step.attempts or ""),
            escape(detail[:120]),
        )
    return table


def _print_run(run: workflow_pb2.WorkflowRun) -> None:
    out = _out()
    out.print(f"run [cyan]{escape(run.id)}[/] is {_status(run.status)}")
    out.print(_run_table(run))
    if run.HasField("output"):
        out.print(f"output: {escape(_proto_inline(run.output))}")
    if run.HasField("error"):
        out.print(f"[red]error[/] {escape(run.error.reason)}: {escape(run.error.message)}")
    out.print(f"[dim]Temporal workflow id: {escape(run.temporal_workflow_id)}[/]")


def describe_event(event: workflow_pb2.WorkflowRunEvent) -> str:
    """One line per run event, for humans."""
    kind = event.WhichOneof("event") or "?"
    if kind == "run_started":
        return f"run started ({event.run_started.workflow_id})"
    if kind == "run_finished":
        finished = event.run_finished
        return f"run finished {_status(finished.status)} {escape(_proto_inline(finished.output))}"
    if kind == "run_failed":
        return f"[red]run failed[/] {escape(event.run_failed.reason)}: " + escape(
            event.run_failed.message
        )
    if kind == "run_pending":
        return _pending_notice(event.run_pending.task_queue, event.run_pending.waited)
    step = getattr(event, kind)
    text = f"{kind.removeprefix('step_')} [bold]{escape(step.path)}[/]"
    if kind == "step_succeeded":
        text += f" → {escape(_proto_inline(step.output))[:100]}"
    elif kind == "step_suspended":
        text += f" waiting for: {escape(_proto_inline(step.suspend_payload))}"
    elif kind in ("step_retrying", "step_failed"):
        text += f" ({escape(step.error.reason)}: {escape(step.error.message)})"
    return text


@workflows_app.command("list")
def workflows_list(
    ctx: typer.Context, as_json: bool = typer.Option(False, "--json", help="Print JSON.")
) -> None:
    """List the registered workflow definitions."""
    workflows = _run(_connection(ctx), lambda c: c.list_workflows())
    if as_json:
        _print_json([to_dict(w) for w in workflows])
        return
    table = Table(title="workflows")
    for column in ("id", "version", "steps", "description"):
        table.add_column(column)
    for workflow in workflows:
        table.add_row(
            escape(workflow.id),
            workflow.version,
            " → ".join(step.id for step in workflow.steps),
            escape(workflow.description),
        )
    _out().print(table)


@workflows_app.command("show")
def workflows_show(
    ctx: typer.Context,
    workflow_id: str = typer.Argument(..., help="Workflow id."),
    as_json: bool = typer.Option(False, "--json", help="Print JSON (with the schemas)."),
) -> None:
    """Show a workflow's steps (and, with --json, its schemas)."""
    workflow = _run(_connection(ctx), lambda c: c.get_workflow(workflow_id))
    if as_json:
        _print_json(to_dict(workflow))
        return
    tree = Tree(f"[bold]{escape(workflow.id)}[/] v{workflow.version}")
    _step_tree(tree, workflow.steps)
    _out().print(tree)


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
    payload = _json_object(data, "--input") or {}

    async def work(client: LoomworkClient) -> workflow_pb2.WorkflowRun:
        run = await client.start_workflow_run(workflow_id, payload, client_run_id=run_id)
        if watch and not as_json:
            _out().print(f"started run [cyan]{escape(run.id)}[/]")
            async for event in client.watch_workflow_run(run.id, timeout=None):
                _out().print(f"  #{event.event_id} {describe_event(event)}")
            run = await client.get_workflow_run(run.id)
        return run

    run = _run(_connection(ctx), work)
    if as_json:
        _print_json(to_dict(run))
    elif watch:
        _out().print(f"run [cyan]{escape(run.id)}[/] is {_status(run.status)}")
    else:
        _out().print(
            f"started run [cyan]{escape(run.id)}[/]; follow it with "
            f"`loomwork workflows watch {run.id}`"
        )


@workflows_app.command("get")
def workflows_get(
    ctx: typer.Context,
    run_id: str = typer.Argument(..., help="Run id."),
    as_json: bool = typer.Option(False, "--json", help="Print JSON."),
) -> None:
    """Show a run with each step execution."""
    run = _run(_connection(ctx), lambda c: c.get_workflow_run(run_id))
    if as_json:
        _print_json(to_dict(run))
    else:
        _print_run(run)


@workflows_app.command("runs")
def workflows_runs(
    ctx: typer.Context,
    workflow_id: str = typer.Option("", "--workflow", help="Only runs of this workflow."),
    status: list[str] = typer.Option(  # noqa: B008
        [], "--status", help="Only runs in this status (repeatable), e.g. suspended."
    ),
    limit: int = typer.Option(20, "--limit", "-n", help="How many runs."),
    as_json: bool = typer.Option(False, "--json", help="Print JSON."),
) -> None:
    """List runs, newest first."""
    statuses = _statuses(workflow_pb2.WorkflowRunStatus, "WORKFLOW_RUN_STATUS_", status)
    response = _run(
        _connection(ctx),
        lambda c: c.list_workflow_runs(workflow_id=workflow_id, statuses=statuses, page_size=limit),
    )
    if as_json:
        _print_json([to_dict(r) for r in response.runs])
        return
    table = Table(title="workflow runs")
    for column in ("run", "workflow", "status", "started"):
        table.add_column(column)
    for run in response.runs:
        started = _short_time(run.create_time)
        table.add_row(escape(run.id), escape(run.workflow_id), _status(run.status), started)
    _out().print(table)


@workflows_app.command("resume")
def workflows_resume(
    ctx: typer.Context,
    run_id: str = typer.Argument(..., help="Run id."),
    step_id: str = typer.Argument(..., help="The suspended step (id, or path like approve[2])."),
    data: str = typer.Option("{}", "--data", "-d", help="Resume data, a JSON object."),
) -> None:
    """Resume a suspended step."""
    payload = _json_object(data, "--data") or {}
    run = _run(_connection(ctx), lambda c: c.resume_workflow_run(run_id, step_id, payload))
    _out().print(f"resumed {escape(step_id)}; run is {_status(run.status)}")


@workflows_app.command("cancel")
def workflows_cancel(
    ctx: typer.Context,
    run_id: str = typer.Argument(..., help="Run id."),
    reason: str = typer.Option("", "--reason"),
) -> None:
    """Cancel a run."""
    run = _run(_connection(ctx), lambda c: c.cancel_workflow_run(run_id, reason))
    _out().print(f"cancel requested; run is {_status(run.status)}")


@workflows_app.command("watch")
def workflows_watch(
    ctx: typer.Context,
    run_id: str = typer.Argument(..., help="Run id."),
    after: int = typer.Option(0, "--after", help="Only events after this event id."),
) -> None:
    """Follow a run's events until it ends (reconnect with --after <last id>)."""

    async def work(client: LoomworkClient) -> None:
        async for event in client.watch_workflow_run(run_id, after_event_id=after, timeout=None):
            _out().print(f"#{event.event_id} {describe_event(event)}")

    _run(_connection(ctx), work)


async def demo_workflows(ctx: DemoContext) -> None:
    """The three seed workflows: linear, branching, suspend/resume."""
    client = ctx.client
    order = {
        "customer": "Ada",
        "country": "DE",
        "lines": [{"sku": "loom", "quantity": 2, "unit_price": 50.0}],
    }
    ctx.note("order-pipeline (linear: validate → process → store → notify):")
    run = await client.start_workflow_run("order-pipeline", order)
    async for event in client.watch_workflow_run(run.id):
        ctx.ok(f"#{event.event_id} {describe_event(event)}")
    ctx.note("ticket-triage (branching): a billing ticket takes the billing path:")
    run = await client.start_workflow_run("ticket-triage", {"subject": "Wrong invoice"})
    async for event in client.watch_workflow_run(run.id):
        if event.HasField("step_skipped") or event.HasField("run_finished"):
            ctx.ok(f"#{event.event_id} {describe_event(event)}")
    ctx.note("expense-approval (suspend/resume): 250.00 needs a person:")
    run = await client.start_workflow_run(
        "expense-approval", {"employee": "Grace", "amount": 250.0, "reason": "conference"}
    )
    async for event in client.watch_workflow_run(run.id):
        ctx.ok(f"#{event.event_id} {describe_event(event)}")
        if event.HasField("step_suspended"):
            current = await client.get_workflow_run(run.id)
            ctx.ok(f"GetRun: status {_status(current.status)}")
            await client.resume_workflow_run(
                run.id, "approve", {"approved": True, "approver": "Linus"}
            )
            ctx.ok("resumed by ResumeRun (a Temporal Update; a `resume` signal works too)")
