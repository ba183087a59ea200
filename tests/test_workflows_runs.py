"""Workflow runs through gRPC as a client service would: start (validated, idempotent by
client run id), every step once, branches, failures and retries, agents as steps, what the
Temporal UI shows, listing and the run RPCs' validation."""

from __future__ import annotations

import asyncio

import grpc
import pytest
from pydantic import BaseModel

from loomwork.flows import AgentStepInput, AgentStepOutput, Workflow, agent_step, default_registry
from loomwork.testing import Turn
from protos.loomwork.v1 import workflow_pb2
from tests.support import auth, field_violations, unique
from tests.workflow_support import (
    EXPENSE,
    ORDER,
    as_dict,
    as_struct,
    get_run,
    has_status,
    start_run,
    steps_by_path,
    wait_run,
    watch_events,
)

S = workflow_pb2


async def test_linear_order_pipeline_runs_every_step_once(workflows, token, runtime) -> None:
    run = await start_run(workflows, token, "order-pipeline", ORDER)
    assert run.id.startswith("wfr_")
    assert run.temporal_workflow_id == f"wf/order-pipeline/alpha/{run.id}"
    events = await watch_events(workflows, token, run.id)
    kinds = [e.WhichOneof("event") for e in events]
    assert kinds[0] == "run_started" and kinds[-1] == "run_finished"
    assert [e.step_succeeded.step_id for e in events if e.HasField("step_succeeded")] == [
        "validate",
        "process",
        "store",
        "notify",
    ]
    assert [e.event_id for e in events] == list(range(1, len(events) + 1))
    output = as_dict(events[-1].run_finished.output)
    assert output["total"] == pytest.approx(119.0)
    assert output["notified"].startswith("confirmation for ord-")

    done = await get_run(workflows, token, run.id)
    assert done.status == S.WORKFLOW_RUN_STATUS_SUCCEEDED
    assert as_dict(done.output) == output
    steps = steps_by_path(done)
    assert [s.status for s in done.steps] == [S.WORKFLOW_STEP_STATUS_SUCCEEDED] * 4
    assert steps["process"].attempts == 1
    assert as_dict(steps["process"].output)["tax"] == pytest.approx(19.0)
    assert done.last_event_id == events[-1].event_id
    async with runtime.db.connection() as conn:
        cur = await conn.execute(
            "select count(*) as n from notes where tenant_id = %s and idempotency_key like %s",
            ("alpha", f"wf/{run.id}:%"),
        )
        row = await cur.fetchone()
    assert row["n"] == 1


async def test_start_run_validates_input_against_the_schema(workflows, token) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await start_run(workflows, token, "order-pipeline", {"customer": "", "lines": []})
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert {"input.customer", "input.lines"} <= set(field_violations(err.value))
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await start_run(workflows, token, "no-such-workflow", {})
    assert err.value.code() == grpc.StatusCode.NOT_FOUND
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await start_run(workflows, token, "", {})
    assert "workflow_id" in field_violations(err.value)
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await start_run(workflows, token, "order-pipeline", ORDER, client_run_id="bad id!")
    assert "client_run_id" in field_violations(err.value)


async def test_client_run_id_makes_start_idempotent(workflows, token, other_token) -> None:
    run_id = unique("order")
    first = await start_run(workflows, token, "order-pipeline", ORDER, client_run_id=run_id)
    again = await start_run(workflows, token, "order-pipeline", ORDER, client_run_id=run_id)
    assert first.id == again.id == run_id
    assert first.temporal_workflow_id == again.temporal_workflow_id
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await start_run(workflows, token, "ticket-triage", {"subject": "x"}, client_run_id=run_id)
    assert err.value.code() == grpc.StatusCode.ALREADY_EXISTS
    # Another tenant may use the same id: its own run, and it cannot see ours.
    theirs = await start_run(workflows, other_token, "order-pipeline", ORDER, client_run_id=run_id)
    assert theirs.temporal_workflow_id != first.temporal_workflow_id
    await wait_run(workflows, token, run_id, has_status(S.WORKFLOW_RUN_STATUS_SUCCEEDED))
    await wait_run(workflows, other_token, run_id, has_status(S.WORKFLOW_RUN_STATUS_SUCCEEDED))
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await get_run(workflows, other_token, unique("nobody"))
    assert err.value.code() == grpc.StatusCode.NOT_FOUND


async def test_client_run_id_of_a_run_temporal_no_longer_keeps_is_not_run_again(
    workflows, token, runtime
) -> None:
    """Days later, Temporal's retention has dropped the ended run (the directory still says
    its start reached Temporal): a repeat of its client run id is refused (ALREADY_EXISTS)
    rather than run again."""
    from loomwork.agents.directory import RunDirectory
    from loomwork.flows.state import temporal_workflow_id

    directory = RunDirectory(runtime.redis, prefix="loomwork:workflow-run")
    ran = unique("order")
    await start_run(workflows, token, "order-pipeline", ORDER, client_run_id=ran)
    assert await directory.was_started("alpha", ran)
    # What the directory holds of such a run once Temporal dropped it.
    run_id = unique("order")
    await directory.record("alpha", run_id, temporal_workflow_id("order-pipeline", "alpha", run_id))
    await directory.mark_started("alpha", run_id)
    with pytest.raises(grpc.aio.AioRpcError) as error:
        await start_run(workflows, token, "order-pipeline", ORDER, client_run_id=run_id)
    assert error.value.code() == grpc.StatusCode.ALREADY_EXISTS
    assert "no longer kept by Temporal" in (error.value.details() or "")
    await wait_run(workflows, token, ran, has_status(S.WORKFLOW_RUN_STATUS_SUCCEEDED))


async def test_client_run_id_starts_a_run_whose_first_start_failed(
    workflows, token, runtime
) -> None:
    """The first call recorded the run and then failed to start it (Temporal unreachable, the
    server gone): the repeat starts it instead of answering NOT_FOUND for the id's lifetime."""
    from loomwork.agents.directory import RunDirectory
    from loomwork.flows.state import temporal_workflow_id

    run_id = unique("order")
    directory = RunDirectory(runtime.redis, prefix="loomwork:workflow-run")
    await directory.record("alpha", run_id, temporal_workflow_id("order-pipeline", "alpha", run_id))
    run = await start_run(workflows, token, "order-pipeline", ORDER, client_run_id=run_id)
    assert run.id == run_id
    await wait_run(workflows, token, run_id, has_status(S.WORKFLOW_RUN_STATUS_SUCCEEDED))


async def test_business_rule_failure_is_not_retried(workflows, token) -> None:
    run = await start_run(workflows, token, "order-pipeline", {**ORDER, "country": "ZZ"})
    failed = await wait_run(workflows, token, run.id, has_status(S.WORKFLOW_RUN_STATUS_FAILED))
    validate = steps_by_path(failed)["validate"]
    assert validate.status == S.WORKFLOW_STEP_STATUS_FAILED
    assert validate.attempts == 1
    assert validate.error.reason == "InvalidOrder"
    assert "ZZ" in validate.error.message
    assert failed.error.reason == "InvalidOrder"
    assert "process" not in steps_by_path(failed)
    events = await watch_events(workflows, token, run.id)
    assert events[-1].HasField("run_failed")


@pytest.mark.parametrize(
    ("ticket", "taken"),
    [
        ({"subject": "Site down", "body": "outage!"}, "escalate"),
        ({"subject": "Wrong invoice"}, "billing"),
        ({"subject": "How do I export?"}, "general"),
    ],
)
async def test_branch_takes_the_first_condition_or_the_default(
    workflows, token, ticket, taken
) -> None:
    run = await start_run(workflows, token, "ticket-triage", ticket)
    done = await wait_run(workflows, token, run.id, has_status(S.WORKFLOW_RUN_STATUS_SUCCEEDED))
    steps = steps_by_path(done)
    for path in ("escalate", "billing", "general"):
        expected = "SUCCEEDED" if path == taken else "SKIPPED"
        assert S.WorkflowStepStatus.Name(steps[path].status).endswith(expected), path
    # The paths merge: the reply step got what the taken path produced.
    queue = {"escalate": "on-call", "billing": "billing", "general": "support"}[taken]
    assert as_dict(done.output)["queue"] == queue
    assert steps["reply"].status == S.WORKFLOW_STEP_STATUS_SUCCEEDED


# -- retries -----------------------------------------------------------------------------


async def test_step_retries_then_succeeds(workflows, token) -> None:
    run = await start_run(workflows, token, "flaky", {"total": 5})
    done = await wait_run(workflows, token, run.id, has_status(S.WORKFLOW_RUN_STATUS_SUCCEEDED))
    assert as_dict(done.output) == {"total": 5, "rounds": 3}
    assert steps_by_path(done)["flaky"].attempts == 3
    events = await watch_events(workflows, token, run.id)
    retrying = [e.step_retrying for e in events if e.HasField("step_retrying")]
    assert [r.attempts for r in retrying] == [1, 2]
    assert retrying[0].error.reason == "Flaky"


async def test_non_retryable_error_fails_at_once(workflows, token) -> None:
    run = await start_run(workflows, token, "flaky", {"total": 5, "rounds": -1})
    failed = await wait_run(workflows, token, run.id, has_status(S.WORKFLOW_RUN_STATUS_FAILED))
    step_run = steps_by_path(failed)["flaky"]
    assert (step_run.attempts, step_run.error.reason) == (1, "Fatal")
    assert failed.error.message == "cannot continue"


async def test_list_runs_filters_by_workflow_and_status(workflows, token, other_token) -> None:
    run = await start_run(
        workflows, token, "expense-approval", EXPENSE, metadata=as_struct({"ticket": "T-7"})
    )
    await wait_run(workflows, token, run.id, has_status(S.WORKFLOW_RUN_STATUS_SUSPENDED))

    async def listed(tok: str, **kw) -> list[S.WorkflowRun]:
        response = await workflows.ListRuns(
            S.WorkflowServiceListRunsRequest(**kw), metadata=auth(tok)
        )
        return list(response.runs)

    deadline = asyncio.get_running_loop().time() + 20
    while True:  # visibility catches up a moment after the run changes
        found = await listed(
            token,
            workflow_id="expense-approval",
            statuses=[S.WORKFLOW_RUN_STATUS_SUSPENDED],
            page_size=1000,
        )
        if any(r.id == run.id for r in found):
            break
        assert asyncio.get_running_loop().time() < deadline
        await asyncio.sleep(0.2)
    assert all(r.status == S.WORKFLOW_RUN_STATUS_SUSPENDED for r in found)
    assert all(r.workflow_id == "expense-approval" for r in found)
    # A listed run says what it waits on (its suspended step), without the step's data.
    [mine] = [r for r in found if r.id == run.id]
    [waiting] = mine.steps
    assert (waiting.path, waiting.status) == ("approve", S.WORKFLOW_STEP_STATUS_SUSPENDED)
    assert not waiting.HasField("input") and not waiting.HasField("suspend_payload")
    assert as_dict(mine.metadata) == {"ticket": "T-7"}
    assert run.id not in {r.id for r in await listed(other_token, page_size=1000)}
    succeeded = await listed(token, statuses=[S.WORKFLOW_RUN_STATUS_SUCCEEDED], page_size=1000)
    assert run.id not in {r.id for r in succeeded}
    page = await workflows.ListRuns(
        S.WorkflowServiceListRunsRequest(page_size=1), metadata=auth(token)
    )
    assert len(page.runs) == 1 and page.next_page_token
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await workflows.ListRuns(
            S.WorkflowServiceListRunsRequest(
                page_size=1, page_token=page.next_page_token, workflow_id="flaky"
            ),
            metadata=auth(token),
        )
    assert "page_token" in field_violations(err.value)
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await listed(token, page_size=5000)
    assert "page_size" in field_violations(err.value)


async def test_run_rpcs_validate_their_input(workflows, token, other_token) -> None:
    run = await start_run(workflows, token, "expense-approval", EXPENSE)
    calls = [
        workflows.GetRun(S.WorkflowServiceGetRunRequest(), metadata=auth(token)),
        workflows.ResumeRun(S.WorkflowServiceResumeRunRequest(), metadata=auth(token)),
        workflows.CancelRun(S.WorkflowServiceCancelRunRequest(), metadata=auth(token)),
        workflows.CancelRun(
            S.WorkflowServiceCancelRunRequest(run_id=run.id, reason="x" * 2000),
            metadata=auth(token),
        ),
        workflows.ListWorkflows(S.ListWorkflowsRequest(page_token="garbage"), metadata=auth(token)),
        workflows.ListRuns(S.WorkflowServiceListRunsRequest(statuses=[99]), metadata=auth(token)),
    ]
    for call in calls:
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await call
        assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT, err.value.details()
        assert field_violations(err.value)
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await anext(
            aiter(
                workflows.WatchRun(
                    S.WorkflowServiceWatchRunRequest(run_id=run.id, after_event_id=-1),
                    metadata=auth(token),
                )
            )
        )
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    for call in (
        workflows.GetRun(S.WorkflowServiceGetRunRequest(run_id=run.id), metadata=auth(other_token)),
        workflows.ResumeRun(
            S.WorkflowServiceResumeRunRequest(run_id=run.id, step_id="approve"),
            metadata=auth(other_token),
        ),
        workflows.CancelRun(
            S.WorkflowServiceCancelRunRequest(run_id=run.id), metadata=auth(other_token)
        ),
    ):
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await call
        assert err.value.code() == grpc.StatusCode.NOT_FOUND


# -- agents as steps, the Temporal UI, resumable streams --------------------------------------


class Topic(BaseModel):
    topic: str


class Summary(BaseModel):
    topic: str
    summary: str


def _ask(topic: Topic) -> AgentStepInput:
    return AgentStepInput(prompt=f"Summarize {topic.topic} in one line.")


def _summary(answer: AgentStepOutput) -> Summary:
    return Summary(topic="", summary=answer.text)


default_registry.register(
    Workflow("summarize", input=Topic, output=Summary)
    .map("ask", _ask, output=AgentStepInput)
    .then(agent_step("assistant-step", agent="assistant"))
    .map("shape", _summary, output=Summary)
)


async def test_agent_as_a_step(workflows, token, model_server, runtime) -> None:
    model_server.set_script([Turn(text="Looms weave threads into cloth.")])
    try:
        run = await start_run(workflows, token, "summarize", {"topic": "looms"})
        done = await wait_run(workflows, token, run.id, has_status(S.WORKFLOW_RUN_STATUS_SUCCEEDED))
    finally:
        model_server.set_script(None)
    assert as_dict(done.output)["summary"] == "Looms weave threads into cloth."
    step_run = steps_by_path(done)["assistant-step"]
    assert step_run.kind == S.WORKFLOW_STEP_KIND_AGENT
    assert as_dict(step_run.output)["run_id"] == f"{run.id}.assistant-step"
    # The agent ran as a child workflow, visible in the Temporal UI under the run's id.
    child = runtime.temporal.get_workflow_handle(f"{done.temporal_workflow_id}/assistant-step")
    assert (await child.describe()).status.name == "COMPLETED"


async def test_steps_are_named_in_the_temporal_ui(workflows, token, runtime) -> None:
    run = await start_run(workflows, token, "ticket-triage", {"subject": "Wrong invoice"})
    await wait_run(workflows, token, run.id, has_status(S.WORKFLOW_RUN_STATUS_SUCCEEDED))
    handle = runtime.temporal.get_workflow_handle(run.temporal_workflow_id)
    summaries = []
    converter = runtime.temporal.data_converter.payload_converter
    async for event in handle.fetch_history_events():
        if event.HasField("activity_task_scheduled_event_attributes"):
            summary = event.user_metadata.summary
            summaries.append(converter.from_payload(summary, str))
    assert summaries == [
        "classify: Sort the ticket by keywords.",
        "billing: Hand over to the billing team.",
        "reply: Answer the customer with what happens next (every path merges here).",
    ]
    described = await handle.describe()
    attributes = {k.name: v for k, v in described.typed_search_attributes}
    assert attributes["LoomworkTenant"] == "alpha"
    assert attributes["LoomworkWorkflow"] == "ticket-triage"
    assert attributes["LoomworkRun"] == run.id
    assert attributes["LoomworkStatus"] == "SUCCEEDED"
