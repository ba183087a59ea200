"""`loomwork usage …`: model tokens and their cost, and the tenant's quotas (UsageService)."""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta

import typer
from rich import box
from rich.markup import escape
from rich.table import Table

from clients.cli.common import (
    connection,
    connection_callback,
    iso_time,
    print_json,
    run_with_client,
    stdout_console,
    to_dict,
)
from clients.client import LoomworkClient
from clients.usage import DIMENSIONS
from protos.loomwork.v1 import usage_pb2

__all__ = ["cost_text", "parse_since", "register", "usage_app", "usage_table"]

usage_app = typer.Typer(
    name="usage",
    help="Model tokens, their cost and the tenant's quotas (UsageService).",
    no_args_is_help=True,
    callback=connection_callback,
)

_RELATIVE = re.compile(r"^(\d+)([mhdw])$")
_UNITS = {"m": "minutes", "h": "hours", "d": "days", "w": "weeks"}


def parse_since(value: str, option: str) -> datetime:
    """A point in time: `7d`, `12h`, `30m`, `2w` ago, or an ISO date or date-time (UTC when
    it names no zone)."""
    relative = _RELATIVE.match(value.strip())
    if relative:
        amount, unit = int(relative.group(1)), _UNITS[relative.group(2)]
        return datetime.now(UTC) - timedelta(**{unit: amount})
    try:
        moment = datetime.fromisoformat(value.strip())
    except ValueError:
        raise typer.BadParameter(
            "expected 7d, 12h, 30m, 2w or an ISO date/time such as 2026-07-01", param_hint=option
        ) from None
    return moment if moment.tzinfo is not None else moment.replace(tzinfo=UTC)


def cost_text(row: usage_pb2.UsageSummary) -> str:
    """The cost, or why it is unknown (the models the price table lacks)."""
    if row.HasField("cost"):
        return f"{row.cost:.6f}".rstrip("0").rstrip(".") if row.cost else "0"
    return f"[yellow]unknown[/] (no price: {escape(', '.join(row.unpriced_models))})"


def _agent(row: usage_pb2.UsageSummary) -> str:
    if row.run_kind == usage_pb2.USAGE_RUN_KIND_RAG_ANSWER:
        return "(rag answers)"
    return escape(row.agent_name)


def usage_table(rows: list[usage_pb2.UsageSummary], by: list[str]) -> Table:
    """Usage groups as a table: the grouping columns, then tokens, calls and cost."""
    table = Table(box=box.SIMPLE_HEAD)
    columns = {
        "day": ("day (UTC)", lambda r: r.day),
        "agent": ("agent", _agent),
        "model": ("model", lambda r: escape(r.model)),
        "run": ("run", lambda r: escape(r.run_id)),
    }
    shown = [d for d in DIMENSIONS if d in by]
    for dimension in shown:
        table.add_column(columns[dimension][0], overflow="fold")
    for name in ("input", "cached", "output", "total", "calls"):
        table.add_column(name, justify="right")
    table.add_column("cost", justify="right")
    for row in rows:
        table.add_row(
            *(columns[d][1](row) for d in shown),
            str(row.input_tokens),
            str(row.cached_input_tokens),
            str(row.output_tokens),
            str(row.total_tokens),
            str(row.model_calls),
            cost_text(row),
        )
    return table


def _dimensions(value: str) -> list[str]:
    names = [n.strip().lower() for n in value.split(",") if n.strip()]
    unknown = [n for n in names if n not in DIMENSIONS]
    if unknown or not names:
        raise typer.BadParameter(
            f"expected names among {', '.join(DIMENSIONS)}, separated by commas", param_hint="--by"
        )
    return names


@usage_app.command("list")
def usage_list(
    ctx: typer.Context,
    since: str = typer.Option("7d", "--since", help="Start: 7d, 12h, 30m, 2w ago, or ISO."),
    until: str | None = typer.Option(None, "--until", help="End (exclusive); default now."),
    by: str = typer.Option("day,agent,model", "--by", help="Group by: day, agent, model, run."),
    agent: str = typer.Option("", "--agent", help="Only this agent's runs."),
    model: str = typer.Option("", "--model", help="Only calls to this model."),
    run: str = typer.Option("", "--run", help="Only this run (agent run or answer id)."),
    limit: int = typer.Option(0, "--limit", "-n", min=0, help="Page size (0: server default)."),
    page_token: str = typer.Option("", "--page-token", help="Continue from a previous page."),
    all_pages: bool = typer.Option(False, "--all", help="Fetch every page."),
    as_json: bool = typer.Option(False, "--json", help="Print JSON."),
) -> None:
    """Model tokens and their cost over a time range, by day, agent, model and/or run."""
    start = parse_since(since, "--since")
    end = parse_since(until, "--until") if until is not None else None
    dimensions = _dimensions(by)

    async def work(client: LoomworkClient) -> usage_pb2.ListUsageResponse:
        async def fetch(token: str) -> usage_pb2.ListUsageResponse:
            return await client.usage.list_usage(
                start_time=start,
                end_time=end,
                group_by=dimensions,
                agent_name=agent,
                model=model,
                run_id=run,
                page_size=limit,
                page_token=token,
            )

        page = await fetch(page_token)
        while all_pages and page.next_page_token:
            more = await fetch(page.next_page_token)
            page.usage.extend(more.usage)
            page.next_page_token = more.next_page_token
        return page

    page = run_with_client(connection(ctx), work)
    if as_json:
        print_json(to_dict(page))
        return
    out = stdout_console()
    out.print(usage_table(list(page.usage), dimensions))
    total = page.total
    out.print(
        f"total {total.total_tokens} tokens (input {total.input_tokens}, cached "
        f"{total.cached_input_tokens}, output {total.output_tokens}) in {total.model_calls} "
        f"model calls of {total.runs} runs; cost {cost_text(total)}",
        soft_wrap=True,
    )
    if page.next_page_token:
        out.print(f"more: --page-token {escape(page.next_page_token)}  (or --all)", soft_wrap=True)


@usage_app.command("quota")
def usage_quota(
    ctx: typer.Context,
    as_json: bool = typer.Option(False, "--json", help="Print JSON."),
) -> None:
    """The tenant's quotas and what it uses of them now."""
    quota = run_with_client(connection(ctx), lambda c: c.usage.get_quota())
    if as_json:
        print_json(to_dict(quota))
        return
    table = Table(show_header=False, box=None, padding=(0, 2, 0, 0))
    table.add_column(style="bold")
    table.add_column()
    tokens = f"{quota.tokens_used_today} of {quota.tokens_per_day or 'no limit'}"
    runs = f"{quota.runs_under_way} of {quota.concurrent_runs}" if quota.concurrent_runs else ""
    for key, value in (
        ("tenant", escape(quota.tenant)),
        ("tokens today (UTC)", tokens),
        ("tokens reset", iso_time(quota.tokens_reset_time)),
        ("runs under way", runs or "no limit"),
    ):
        table.add_row(key, value)
    stdout_console().print(table)


def register(app: typer.Typer) -> None:
    """Adds `loomwork usage …` to the app."""
    app.add_typer(usage_app, name="usage")
