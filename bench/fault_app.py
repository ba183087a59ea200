"""The application bench/faults.py runs: the tool, agent and workflow its `loomwork server` and
`loomwork worker` processes load (LOOMWORK_TOOL_MODULES and LOOMWORK_WORKFLOW_MODULES name
this module, found on PYTHONPATH).

- `count_effect`: the side effect a run makes, a row in `bench_fault_effects` keyed by the
  call's idempotency key, counting how often the tool ran for that key. Retried by Temporal
  while PostgreSQL is away, as a tool with a side effect would be.
- `fault-agent`: calls `count_effect` once, then answers (the scripted model decides).
- `fault-flow`: prepare → effect (`count_effect` as a tool step) → settle → close, each step
  sleeping BENCH_FAULT_STEP_SECONDS (default 1) so runs are in flight when a fault hits.
"""

from __future__ import annotations

import asyncio
import os
from datetime import timedelta

import psycopg
from pydantic import BaseModel, Field

from loomwork.agents.definitions import AgentDefinition
from loomwork.flows import StepContext, ToolStepOutput, Workflow, default_registry, step, tool_step
from loomwork.tools import RetryPolicy, ToolContext, tool

EFFECTS_TABLE = "bench_fault_effects"
CREATE_EFFECTS = f"""
create table if not exists {EFFECTS_TABLE} (
    key text primary key,
    marker text not null,
    executions int not null
)"""
_RECORD = f"""
insert into {EFFECTS_TABLE} (key, marker, executions) values (%s, %s, 1)
on conflict (key) do update set executions = {EFFECTS_TABLE}.executions + 1
returning executions"""


def _step_seconds() -> float:
    return float(os.environ.get("BENCH_FAULT_STEP_SECONDS", "1.0"))


class EffectArgs(BaseModel):
    marker: str = Field(min_length=1, max_length=128, description="The run's marker")


class Effect(BaseModel):
    marker: str
    executions: int


@tool(
    description="Record the run's side effect (once per call).",
    retry=RetryPolicy(
        max_attempts=40,
        initial_interval=timedelta(milliseconds=500),
        maximum_interval=timedelta(seconds=5),
    ),
    timeout=timedelta(seconds=30),
)
async def count_effect(args: EffectArgs, ctx: ToolContext) -> Effect:
    async with await psycopg.AsyncConnection.connect(
        os.environ["DATABASE_URL"], autocommit=True, connect_timeout=5
    ) as conn:
        cursor = await conn.execute(_RECORD, (ctx.idempotency_key, args.marker))
        row = await cursor.fetchone()
    assert row is not None
    return Effect(marker=args.marker, executions=int(row[0]))


fault_agent = AgentDefinition(
    name="fault-agent",
    description="Records its side effect, then answers.",
    instructions="Call count_effect with the marker you are given, then answer.",
    tool_names=["count_effect"],
)


class FlowInput(BaseModel):
    marker: str


class Settled(BaseModel):
    marker: str
    executions: int


@step("prepare", input=FlowInput, output=EffectArgs)
async def prepare(data: FlowInput, ctx: StepContext) -> EffectArgs:
    """Think a while, then name the effect."""
    await asyncio.sleep(_step_seconds())
    return EffectArgs(marker=data.marker)


@step("settle", input=ToolStepOutput, output=Settled)
async def settle(done: ToolStepOutput, ctx: StepContext) -> Settled:
    """Think a while about the effect."""
    await asyncio.sleep(_step_seconds())
    return Settled.model_validate(done.result)


@step("close", input=Settled, output=Settled)
async def close(settled: Settled, ctx: StepContext) -> Settled:
    """Think a while, then end."""
    await asyncio.sleep(_step_seconds())
    return settled


FAULT_FLOW = (
    Workflow("fault-flow", input=FlowInput, output=Settled)
    .then(prepare)
    .then(tool_step("effect", tool=count_effect))
    .then(settle)
    .then(close)
)
if not default_registry.contains(FAULT_FLOW.commit().id, FAULT_FLOW.version):
    default_registry.register(FAULT_FLOW)
