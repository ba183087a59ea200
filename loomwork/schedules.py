"""Schedules of runs: what a tenant asks to start on a cron expression or an interval (a
workflow run or an agent run), checked here; kept and fired by Temporal Schedules.

A schedule's id is the tenant's (`nightly-report`); Temporal's is namespaced by tenant
(`loomwork/<tenant>/<id>`), so one tenant never reaches another's. Each run a schedule
starts gets a run id `sch-<id>-<time it was due>` (Temporal appends the time to the
workflow id it starts) and the schedule's id as a search attribute.
"""

from __future__ import annotations

import re
from datetime import datetime, timedelta
from typing import Any, Literal
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from pydantic import BaseModel, Field

from loomwork.errors import Violations

SCHEDULE_ID_PATTERN = re.compile(r"^[A-Za-z][A-Za-z0-9_-]{0,63}$")
SCHEDULE_ID_RULE = "1..64 characters of [A-Za-z0-9_-], starting with a letter"
CRON_MACROS = frozenset(
    {"@yearly", "@annually", "@monthly", "@weekly", "@daily", "@midnight", "@hourly"}
)
_CRON_FIELD = re.compile(r"^[0-9A-Za-z*/,?#-]+$")

OverlapPolicy = Literal[
    "SKIP", "BUFFER_ONE", "BUFFER_ALL", "CANCEL_OTHER", "TERMINATE_OTHER", "ALLOW_ALL"
]


class ScheduledWorkflowRun(BaseModel):
    """A workflow run each action starts (input validated against the workflow's schema)."""

    kind: Literal["workflow"] = "workflow"
    workflow_id: str
    input: dict[str, Any] = Field(default_factory=dict)
    metadata: dict[str, Any] = Field(default_factory=dict)


class ScheduledAgentRun(BaseModel):
    """An agent run each action starts: one user message, on a thread or none."""

    kind: Literal["agent"] = "agent"
    agent_name: str
    prompt: str
    thread_id: str = ""


class ScheduleDefinition(BaseModel):
    """A schedule as its tenant defines it: when (cron or interval, in a time zone), what
    to do when runs would overlap, how late a missed action may start, and what it starts."""

    id: str
    description: str = ""
    cron: str = ""
    interval: timedelta | None = None
    time_zone: str = ""  # IANA name; "" is UTC
    overlap: OverlapPolicy = "SKIP"
    catchup_window: timedelta | None = None  # None: Temporal's default
    action: ScheduledWorkflowRun | ScheduledAgentRun = Field(discriminator="kind")


class ScheduleView(BaseModel):
    """A schedule with its state as Temporal keeps it."""

    definition: ScheduleDefinition
    paused: bool = False
    note: str = ""
    next_action_times: list[datetime] = Field(default_factory=list)
    recent_run_ids: list[str] = Field(default_factory=list)  # newest first
    action_count: int = 0
    create_time: datetime | None = None
    temporal_schedule_id: str = ""


def check_schedule_id(value: str, field: str) -> None:
    """InvalidArgument naming `field` unless `value` is a schedule id."""
    violations = Violations()
    if not value:
        violations.add(field, "is required")
    elif not SCHEDULE_ID_PATTERN.match(value):
        violations.add(field, f"must be {SCHEDULE_ID_RULE}")
    violations.raise_if_any()


def cron_problem(cron: str) -> str:
    """Why `cron` is not a cron expression Temporal reads ("" when it may be one: Temporal
    has the last word on its values, and says so on creation)."""
    if cron in CRON_MACROS or cron.startswith("@every "):
        return ""
    fields = cron.split()
    if not 5 <= len(fields) <= 7:
        return (
            "must have 5 to 7 fields (minute hour day-of-month month day-of-week)"
            " or be @hourly, @daily, ..."
        )
    bad = next((f for f in fields if not _CRON_FIELD.match(f)), None)
    return f"has a field Temporal cannot read: {bad!r}" if bad else ""


def time_zone_known(name: str) -> bool:
    try:
        ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError):
        return False
    return True


def check_schedule(definition: ScheduleDefinition, prefix: str = "schedule") -> None:
    """InvalidArgument with a violation per field (`schedule.cron`, ...) that is wrong."""
    violations = Violations()
    if not definition.id:
        violations.add(f"{prefix}.id", "is required")
    elif not SCHEDULE_ID_PATTERN.match(definition.id):
        violations.add(f"{prefix}.id", f"must be {SCHEDULE_ID_RULE}")
    if bool(definition.cron) == (definition.interval is not None):
        violations.add(f"{prefix}.cron", "set either cron or interval (one of them)")
    elif definition.cron and (problem := cron_problem(definition.cron)):
        violations.add(f"{prefix}.cron", problem)
    if definition.time_zone and not time_zone_known(definition.time_zone):
        violations.add(f"{prefix}.time_zone", "is not an IANA time zone name (e.g. Europe/Paris)")
    action = definition.action
    if isinstance(action, ScheduledWorkflowRun) and not action.workflow_id:
        violations.add(f"{prefix}.workflow_run.workflow_id", "is required")
    if isinstance(action, ScheduledAgentRun):
        if not action.agent_name:
            violations.add(f"{prefix}.agent_run.agent_name", "is required")
        if not action.prompt.strip():
            violations.add(f"{prefix}.agent_run.prompt", "is required")
    violations.raise_if_any()


def temporal_schedule_id(tenant: str, schedule_id: str) -> str:
    """Temporal's id of a tenant's schedule: `loomwork/<tenant>/<id>`."""
    return f"loomwork/{tenant}/{schedule_id}"


def scheduled_run_prefix(schedule_id: str) -> str:
    """The start of the run ids a schedule's runs get (Temporal appends the due time)."""
    return f"sch-{schedule_id}"
