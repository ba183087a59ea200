"""Schedules through gRPC on the real Temporal dev server: an interval schedule fires, its
runs are listed with its id, pausing stops it, a trigger starts one run, deleting removes
it; another tenant never sees it; bad cron expressions and time zones name their field; a
schedule of an agent starts agent runs."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import TypeVar

import grpc
import pytest
from google.protobuf import duration_pb2

from loomwork.testing import Turn
from protos.loomwork.v1 import agent_pb2, run_pb2, workflow_pb2
from tests.support import auth, field_violations, unique
from tests.workflow_support import ORDER, as_struct, get_run

S = workflow_pb2
T = TypeVar("T")


def _schedule(schedule_id: str, **fields) -> S.Schedule:
    fields.setdefault(
        "workflow_run", S.ScheduledWorkflowRun(workflow_id="order-pipeline", input=as_struct(ORDER))
    )
    return S.Schedule(id=schedule_id, **fields)


async def _create(workflows, token: str, schedule: S.Schedule, **kw) -> S.Schedule:
    response = await workflows.CreateSchedule(
        S.CreateScheduleRequest(schedule=schedule, **kw), metadata=auth(token)
    )
    return response.schedule


async def _runs(workflows, token: str, schedule_id: str) -> list[S.WorkflowRun]:
    response = await workflows.ListRuns(
        S.WorkflowServiceListRunsRequest(schedule_id=schedule_id, page_size=100),
        metadata=auth(token),
    )
    return list(response.runs)


async def _get(workflows, token: str, schedule_id: str) -> S.Schedule:
    response = await workflows.GetSchedule(
        S.GetScheduleRequest(schedule_id=schedule_id), metadata=auth(token)
    )
    return response.schedule


async def _eventually(probe: Callable[[], Awaitable[T]], done: Callable[[T], bool]) -> T:
    """Poll `probe` until `done` holds of its answer (30 s at most): visibility lags."""
    deadline = asyncio.get_running_loop().time() + 30
    while True:
        value = await probe()
        if done(value):
            return value
        assert asyncio.get_running_loop().time() < deadline, f"never came: {value}"
        await asyncio.sleep(0.2)


async def test_an_interval_schedule_fires_pauses_triggers_and_is_deleted(
    workflows, token, other_token
) -> None:
    schedule_id = unique("every-second")
    created = await _create(
        workflows,
        token,
        _schedule(
            schedule_id,
            interval=duration_pb2.Duration(seconds=1),
            overlap_policy=S.SCHEDULE_OVERLAP_POLICY_ALLOW_ALL,
        ),
    )
    assert created.id == schedule_id and not created.paused
    assert created.temporal_schedule_id == f"loomwork/alpha/{schedule_id}"
    assert created.workflow_run.workflow_id == "order-pipeline"

    # It fires at least twice; each run names the schedule and is a run like any other.
    runs = await _eventually(lambda: _runs(workflows, token, schedule_id), lambda r: len(r) >= 2)
    assert {r.schedule_id for r in runs} == {schedule_id}
    assert {r.workflow_id for r in runs} == {"order-pipeline"}
    assert all(r.id.startswith(f"sch-{schedule_id}-") for r in runs)
    assert len({r.id for r in runs}) == len(runs)
    done = await _eventually(
        lambda: get_run(workflows, token, runs[-1].id),
        lambda r: r.status == S.WORKFLOW_RUN_STATUS_SUCCEEDED,
    )
    assert done.output.fields["total"].number_value == pytest.approx(119.0)
    assert done.temporal_workflow_id == f"wf/order-pipeline/alpha/{runs[-1].id}"
    assert done.schedule_id == schedule_id

    # Another tenant neither sees nor touches it.
    with pytest.raises(grpc.aio.AioRpcError) as hidden:
        await _get(workflows, other_token, schedule_id)
    assert hidden.value.code() == grpc.StatusCode.NOT_FOUND
    for call, request in (
        (workflows.PauseSchedule, S.PauseScheduleRequest(schedule_id=schedule_id, paused=True)),
        (workflows.TriggerSchedule, S.TriggerScheduleRequest(schedule_id=schedule_id)),
        (workflows.DeleteSchedule, S.DeleteScheduleRequest(schedule_id=schedule_id)),
    ):
        with pytest.raises(grpc.aio.AioRpcError) as refused:
            await call(request, metadata=auth(other_token))
        assert refused.value.code() == grpc.StatusCode.NOT_FOUND
    theirs = await workflows.ListSchedules(S.ListSchedulesRequest(), metadata=auth(other_token))
    assert schedule_id not in {s.id for s in theirs.schedules}
    assert await _runs(workflows, other_token, schedule_id) == []
    ours = await _eventually(
        lambda: workflows.ListSchedules(S.ListSchedulesRequest(), metadata=auth(token)),
        lambda r: schedule_id in {s.id for s in r.schedules},
    )
    assert [s.interval.seconds for s in ours.schedules if s.id == schedule_id] == [1]

    # Paused: no more runs.
    paused = await workflows.PauseSchedule(
        S.PauseScheduleRequest(schedule_id=schedule_id, paused=True, note="maintenance"),
        metadata=auth(token),
    )
    assert paused.schedule.paused and paused.schedule.note == "maintenance"
    await asyncio.sleep(2)  # a run started just before the pause reaches visibility
    actions = (await _get(workflows, token, schedule_id)).action_count
    listed = len(await _runs(workflows, token, schedule_id))
    await asyncio.sleep(3)
    assert (await _get(workflows, token, schedule_id)).action_count == actions
    assert len(await _runs(workflows, token, schedule_id)) == listed

    # Triggered by hand: exactly one run more, and it stays paused.
    await workflows.TriggerSchedule(
        S.TriggerScheduleRequest(schedule_id=schedule_id), metadata=auth(token)
    )
    after = await _eventually(
        lambda: _runs(workflows, token, schedule_id), lambda r: len(r) == listed + 1
    )
    got = await _get(workflows, token, schedule_id)
    assert got.paused and got.action_count == actions + 1
    assert got.recent_run_ids[0] == after[0].id  # newest first, on both sides

    await workflows.DeleteSchedule(
        S.DeleteScheduleRequest(schedule_id=schedule_id), metadata=auth(token)
    )
    with pytest.raises(grpc.aio.AioRpcError) as gone:
        await _get(workflows, token, schedule_id)
    assert gone.value.code() == grpc.StatusCode.NOT_FOUND
    # The runs it started stay.
    assert len(await _runs(workflows, token, schedule_id)) == listed + 1


@pytest.mark.parametrize(
    ("fields", "field"),
    [
        ({"cron": "every morning"}, "schedule.cron"),
        ({"cron": "99 * * * *"}, "schedule.cron"),  # the right shape; Temporal refuses it
        ({"cron": "0 9 * * *", "time_zone": "Mars/Olympus_Mons"}, "schedule.time_zone"),
        ({"cron": "0 9 * * *", "interval": duration_pb2.Duration(seconds=5)}, "schedule.cron"),
        ({}, "schedule.cron"),  # neither cron nor interval
        ({"cron": "0 9 * * *", "id": "9-starts-with-a-digit"}, "schedule.id"),
        (
            {
                "cron": "0 9 * * *",
                "workflow_run": S.ScheduledWorkflowRun(
                    workflow_id="order-pipeline", input=as_struct({"customer": "Ada"})
                ),
            },
            "schedule.workflow_run.input.lines",
        ),
    ],
    ids=[
        "not-cron",
        "cron-out-of-range",
        "time-zone",
        "cron-and-interval",
        "no-when",
        "id",
        "input",
    ],
)
async def test_a_schedule_temporal_cannot_run_is_invalid_argument_naming_the_field(
    workflows, token, fields, field
) -> None:
    schedule_id = fields.pop("id", unique("bad"))
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await _create(workflows, token, _schedule(schedule_id, **fields))
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert field in field_violations(err.value), field_violations(err.value)


async def test_a_schedule_id_in_use_is_already_exists_and_cron_keeps_its_time_zone(
    workflows, token, other_token
) -> None:
    schedule_id = unique("weekday-mornings")
    schedule = _schedule(schedule_id, cron="0 9 * * 1-5", time_zone="Europe/Paris")
    created = await _create(workflows, token, schedule, paused=True)
    assert created.paused and created.cron == "0 9 * * 1-5"
    assert created.time_zone == "Europe/Paris"
    # 09:00 in Paris is 07:00 or 08:00 UTC, on a weekday.
    first = created.next_action_times[0].ToDatetime()
    assert first.hour in (7, 8) and first.minute == 0 and first.weekday() < 5
    with pytest.raises(grpc.aio.AioRpcError) as again:
        await _create(workflows, token, schedule)
    assert again.value.code() == grpc.StatusCode.ALREADY_EXISTS
    # The same id in another tenant is another schedule.
    theirs = await _create(workflows, other_token, schedule, paused=True)
    assert theirs.temporal_schedule_id == f"loomwork/beta/{schedule_id}"
    for who in (token, other_token):
        await workflows.DeleteSchedule(
            S.DeleteScheduleRequest(schedule_id=schedule_id), metadata=auth(who)
        )


async def test_a_schedule_of_an_agent_starts_agent_runs_that_name_it(
    workflows, agents, token, model
) -> None:
    model.set_script([Turn(text="Good morning, here is the digest.")])
    schedule_id = unique("morning-digest")
    created = await _create(
        workflows,
        token,
        S.Schedule(
            id=schedule_id,
            cron="@daily",
            agent_run=S.ScheduledAgentRun(agent_name="assistant", prompt="Write the digest."),
        ),
        paused=True,
    )
    assert created.agent_run.agent_name == "assistant"
    await workflows.TriggerSchedule(
        S.TriggerScheduleRequest(schedule_id=schedule_id), metadata=auth(token)
    )

    async def listed() -> list[agent_pb2.AgentRun]:
        response = await agents.ListRuns(
            agent_pb2.AgentServiceListRunsRequest(schedule_id=schedule_id), metadata=auth(token)
        )
        return list(response.runs)

    [run] = await _eventually(
        listed, lambda r: len(r) == 1 and r[0].status == run_pb2.RUN_STATUS_SUCCEEDED
    )
    assert run.schedule_id == schedule_id and run.agent_name == "assistant"
    assert run.id.startswith(f"sch-{schedule_id}-")
    got = await agents.GetRun(
        agent_pb2.AgentServiceGetRunRequest(run_id=run.id), metadata=auth(token)
    )
    assert got.run.status == run_pb2.RUN_STATUS_SUCCEEDED
    assert got.run.schedule_id == schedule_id
    assert [m.last_user_text for m in model.requests] == ["Write the digest."]
    await workflows.DeleteSchedule(
        S.DeleteScheduleRequest(schedule_id=schedule_id), metadata=auth(token)
    )
