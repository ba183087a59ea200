"""The worker runs real workflows on Temporal, with the pydantic data converter."""

from __future__ import annotations

import uuid

from temporalio.api.enums.v1 import IndexedValueType
from temporalio.api.operatorservice.v1 import ListSearchAttributesRequest
from temporalio.worker.workflow_sandbox import SandboxedWorkflowRunner

from server.runtime import Runtime
from server.temporal import SEARCH_ATTRIBUTES, register_search_attributes
from server.worker import workflow_runner
from workflows.stack_check import StackCheckInput, StackCheckResult, StackCheckWorkflow


async def test_stack_check_workflow_runs_on_the_worker(runtime: Runtime, worker: None) -> None:
    workflow_id = f"stack-check/{uuid.uuid4().hex[:8]}"
    result = await runtime.temporal.execute_workflow(
        StackCheckWorkflow.run,
        StackCheckInput(requested_by="pytest"),
        id=workflow_id,
        task_queue=runtime.settings.task_queue,
        result_type=StackCheckResult,
    )
    assert isinstance(result, StackCheckResult)
    assert result.workflow_id == workflow_id
    by_name = {c.name: c for c in result.report.checks}
    assert by_name["postgres"].ok and "PostgreSQL 18" in by_name["postgres"].detail
    assert by_name["redis"].ok
    assert result.report.schema_version >= 1

    history = await runtime.temporal.get_workflow_handle(workflow_id).fetch_history()
    scheduled = [
        e.activity_task_scheduled_event_attributes.activity_type.name
        for e in history.events
        if e.HasField("activity_task_scheduled_event_attributes")
    ]
    assert scheduled == ["check_dependencies"]


async def test_search_attributes_are_registered_once(runtime: Runtime) -> None:
    namespace = runtime.settings.temporal_namespace
    assert await register_search_attributes(runtime.temporal, namespace) == []
    listed = await runtime.temporal.operator_service.list_search_attributes(
        ListSearchAttributesRequest(namespace=namespace)
    )
    for name in SEARCH_ATTRIBUTES:
        assert listed.custom_attributes[name] == IndexedValueType.INDEXED_VALUE_TYPE_KEYWORD


def test_workflow_sandbox_modes() -> None:
    """`strict` re-imports workflow modules per run (restrictions apply in them);
    `passthrough` shares Loomwork's own and keeps the rest of the sandbox."""
    strict = workflow_runner("strict")
    shared = workflow_runner("passthrough")
    assert isinstance(strict, SandboxedWorkflowRunner)
    assert isinstance(shared, SandboxedWorkflowRunner)
    assert "workflows" not in strict.restrictions.passthrough_modules
    assert "workflows" in shared.restrictions.passthrough_modules
    assert shared.restrictions.invalid_module_members == strict.restrictions.invalid_module_members
