"""`loomwork schedules …`: schedules of workflow and agent runs (WorkflowService)."""

from __future__ import annotations

from datetime import timedelta

import typer
from rich.markup import escape
from rich.table import Table

from clients.cli.common import (
    connection,
    connection_callback,
    parse_json_object,
    print_items,
    print_json,
    run_with_client,
    short_time,
    stdout_console,
    to_dict,
)
from protos.loomwork.v1 import workflow_pb2

__all__ = ["register", "schedules_app"]

schedules_app = typer.Typer(
    name="schedules",
    help="Schedules of workflow and agent runs (cron or interval, on Temporal Schedules).",
    no_args_is_help=True,
    callback=connection_callback,
)

_OVERLAPS = [
    name.removeprefix("SCHEDULE_OVERLAP_POLICY_").lower().replace("_", "-")
    for name in workflow_pb2.ScheduleOverlapPolicy.keys()  # noqa: SIM118 (an enum wrapper)
    if name != "SCHEDULE_OVERLAP_POLICY_UNSPECIFIED"
]


def _overlap(value: str) -> workflow_pb2.ScheduleOverlapPolicy:
    if not value:
        return workflow_pb2.SCHEDULE_OVERLAP_POLICY_UNSPECIFIED
    if value not in _OVERLAPS:
        raise typer.BadParameter(f"one of {', '.join(_OVERLAPS)}", param_hint="--overlap")
    name = "SCHEDULE_OVERLAP_POLICY_" + value.upper().replace("-", "_")
    return workflow_pb2.ScheduleOverlapPolicy.Value(name)  # type: ignore[return-value]


def _what(schedule: workflow_pb2.Schedule) -> str:
    if schedule.HasField("agent_run"):
        return f"agent {schedule.agent_run.agent_name}"
    return f"workflow {schedule.workflow_run.workflow_id}"


def _when(schedule: workflow_pb2.Schedule) -> str:
    if schedule.cron:
        zone = f" ({schedule.time_zone})" if schedule.time_zone else ""
        return f"cron {schedule.cron}{zone}"
    return f"every {schedule.interval.ToTimedelta().total_seconds():g} s"


def _print(schedule: workflow_pb2.Schedule) -> None:
    state = "[yellow]paused[/]" if schedule.paused else "[green]active[/]"
    out = stdout_console()
    out.print(
        f"schedule [cyan]{escape(schedule.id)}[/]: {escape(_what(schedule))}, "
        f"{escape(_when(schedule))}, {state}"
    )
    if schedule.next_action_times:
        out.print(f"  next: {short_time(schedule.next_action_times[0])}")
    if schedule.recent_run_ids:
        out.print(f"  recent runs: {escape(', '.join(schedule.recent_run_ids))}")


@schedules_app.command("create")
def schedules_create(
    ctx: typer.Context,
    schedule_id: str = typer.Argument(..., help="Schedule id (unique in your tenant)."),
    workflow_id: str = typer.Option("", "--workflow", help="Start a run of this workflow."),
    data: str = typer.Option("{}", "--input", "-i", help="The workflow run's input (JSON)."),
    agent: str = typer.Option("", "--agent", help="Start a run of this agent instead."),
    prompt: str = typer.Option("", "--prompt", help="The agent run's user message."),
    thread_id: str = typer.Option("", "--thread", help="The agent runs' thread."),
    cron: str = typer.Option("", "--cron", help="Cron expression, e.g. '0 9 * * 1-5'."),
    every: float = typer.Option(0, "--every", help="Interval in seconds (instead of --cron)."),
    time_zone: str = typer.Option("", "--time-zone", help="IANA time zone of --cron."),
    overlap: str = typer.Option("", "--overlap", help=f"One of {', '.join(_OVERLAPS)}."),
    catchup: float = typer.Option(0, "--catchup", help="Catch-up window in seconds."),
    paused: bool = typer.Option(False, "--paused", help="Create it paused."),
    as_json: bool = typer.Option(False, "--json", help="Print JSON."),
) -> None:
    """Create a schedule that starts a workflow run (--workflow) or an agent run (--agent)."""
    payload = parse_json_object(data, "--input") or {}
    policy = _overlap(overlap)
    schedule = run_with_client(
        connection(ctx),
        lambda c: c.schedules.create(
            schedule_id,
            workflow_id=workflow_id,
            data=payload,
            agent_name=agent,
            prompt=prompt,
            thread_id=thread_id,
            cron=cron,
            interval=timedelta(seconds=every) if every else None,
            time_zone=time_zone,
            overlap=policy,
            catchup_window=timedelta(seconds=catchup) if catchup else None,
            paused=paused,
        ),
    )
    if as_json:
        print_json(to_dict(schedule))
    else:
        _print(schedule)


@schedules_app.command("get")
def schedules_get(
    ctx: typer.Context,
    schedule_id: str = typer.Argument(..., help="Schedule id."),
    as_json: bool = typer.Option(False, "--json", help="Print JSON."),
) -> None:
    """Show a schedule, its next action and its recent runs."""
    schedule = run_with_client(connection(ctx), lambda c: c.schedules.get(schedule_id))
    if as_json:
        print_json(to_dict(schedule))
    else:
        _print(schedule)


@schedules_app.command("list")
def schedules_list(
    ctx: typer.Context,
    limit: int = typer.Option(50, "--limit", "-n", help="How many schedules."),
    as_json: bool = typer.Option(False, "--json", help="Print JSON."),
) -> None:
    """List your schedules."""
    response = run_with_client(connection(ctx), lambda c: c.schedules.list(page_size=limit))
    print_items(
        response.schedules,
        as_json,
        Table("schedule", "starts", "when", "state", "next", title="schedules"),
        lambda s: (
            escape(s.id),
            escape(_what(s)),
            escape(_when(s)),
            "paused" if s.paused else "active",
            short_time(s.next_action_times[0]) if s.next_action_times else "",
        ),
    )


@schedules_app.command("pause")
def schedules_pause(
    ctx: typer.Context,
    schedule_id: str = typer.Argument(..., help="Schedule id."),
    note: str = typer.Option("", "--note", help="Why."),
    resume: bool = typer.Option(False, "--unpause", help="Unpause it instead."),
) -> None:
    """Pause a schedule (or, with --unpause, let it run again)."""
    schedule = run_with_client(
        connection(ctx),
        lambda c: (c.schedules.unpause if resume else c.schedules.pause)(schedule_id, note=note),
    )
    _print(schedule)


@schedules_app.command("trigger")
def schedules_trigger(
    ctx: typer.Context, schedule_id: str = typer.Argument(..., help="Schedule id.")
) -> None:
    """Start one run of the schedule now."""
    run_with_client(connection(ctx), lambda c: c.schedules.trigger(schedule_id))
    stdout_console().print(f"triggered schedule [cyan]{escape(schedule_id)}[/]")


@schedules_app.command("delete")
def schedules_delete(
    ctx: typer.Context, schedule_id: str = typer.Argument(..., help="Schedule id.")
) -> None:
    """Delete a schedule (the runs it started stay)."""
    run_with_client(connection(ctx), lambda c: c.schedules.delete(schedule_id))
    stdout_console().print(f"deleted schedule [cyan]{escape(schedule_id)}[/]")


def register(app: typer.Typer) -> None:
    """Adds `loomwork schedules …` to the app."""
    app.add_typer(schedules_app, name="schedules")
