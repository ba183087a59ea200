"""The worker runs real workflows on Temporal, with the pydantic data converter."""

from __future__ import annotations

import asyncio
import dataclasses
import uuid
from collections.abc import Sequence

import pytest
from google.protobuf.duration_pb2 import Duration
from temporalio.api.common.v1 import Payload
from temporalio.api.enums.v1 import EventType, IndexedValueType
from temporalio.api.operatorservice.v1 import (
    AddSearchAttributesRequest,
    ListSearchAttributesRequest,
)
from temporalio.api.workflowservice.v1 import RegisterNamespaceRequest
from temporalio.converter import PayloadCodec
from temporalio.worker import Worker
from temporalio.worker.workflow_sandbox import SandboxedWorkflowRunner

from loomwork.errors import FailedPrecondition
from server.runtime import Runtime
from server.temporal import SEARCH_ATTRIBUTES, connect_temporal, register_search_attributes
from server.worker import ContextFreeSandboxRunner, needs_no_serialization_context, workflow_runner
from tests.sandbox_fixtures import Note, SandboxClock, SandboxEcho, echo
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


class _NoopCodec(PayloadCodec):
    async def encode(self, payloads: Sequence[Payload]) -> list[Payload]:
        return list(payloads)

    async def decode(self, payloads: Sequence[Payload]) -> list[Payload]:
        return list(payloads)


def test_serialization_context_is_skipped_only_without_codec(runtime: Runtime) -> None:
    converter = runtime.temporal.data_converter
    assert needs_no_serialization_context(converter)
    with_codec = dataclasses.replace(converter, payload_codec=_NoopCodec())
    assert not needs_no_serialization_context(with_codec)
    assert isinstance(workflow_runner("strict", context_free=True), ContextFreeSandboxRunner)
    assert not isinstance(workflow_runner("strict"), ContextFreeSandboxRunner)


async def test_context_free_sandbox_still_sandboxes_workflow_code(runtime: Runtime) -> None:
    """Skipping the per-payload serialization context changes nothing a workflow sees:
    payloads arrive intact and the sandbox still refuses what workflow code must not do."""
    queue = f"sandbox-{uuid.uuid4().hex[:8]}"
    client = runtime.temporal
    async with Worker(
        client,
        task_queue=queue,
        workflows=[SandboxEcho, SandboxClock],
        activities=[echo],
        workflow_runner=workflow_runner("strict", context_free=True),
    ):
        echoed = await client.execute_workflow(
            SandboxEcho.run,
            Note(text="hi", tags=["a"]),
            id=f"sandbox-echo-{uuid.uuid4().hex[:8]}",
            task_queue=queue,
            result_type=Note,
        )
        assert echoed == Note(text="HI", tags=["a", "echoed"])

        handle = await client.start_workflow(
            SandboxClock.run, id=f"sandbox-clock-{uuid.uuid4().hex[:8]}", task_queue=queue
        )
        failure = ""
        for _ in range(100):
            async for event in handle.fetch_history_events():
                if event.event_type == EventType.EVENT_TYPE_WORKFLOW_TASK_FAILED:
                    failure = event.workflow_task_failed_event_attributes.failure.message
            if failure:
                break
            await asyncio.sleep(0.1)
        await handle.terminate()
    assert "datetime.datetime.now" in failure


async def _fresh_namespace(address: str) -> str:
    client = await connect_temporal(address, "default")
    namespace = f"sa-{uuid.uuid4().hex[:8]}"
    await client.workflow_service.register_namespace(
        RegisterNamespaceRequest(
            namespace=namespace, workflow_execution_retention_period=Duration(seconds=86400)
        )
    )
    return namespace


async def test_search_attributes_registered_by_several_processes_at_once(embedded) -> None:
    """Servers and workers starting together each register the attributes: none fails, and
    the namespace ends up with every one of them."""
    namespace = await _fresh_namespace(embedded["TEMPORAL_ADDRESS"])
    clients = [await connect_temporal(embedded["TEMPORAL_ADDRESS"], namespace) for _ in range(8)]
    added = await asyncio.gather(*(register_search_attributes(c, namespace) for c in clients))
    assert set().union(*added) == set(SEARCH_ATTRIBUTES)  # each added by someone
    listed = await clients[0].operator_service.list_search_attributes(
        ListSearchAttributesRequest(namespace=namespace)
    )
    for name in SEARCH_ATTRIBUTES:
        assert listed.custom_attributes[name] == IndexedValueType.INDEXED_VALUE_TYPE_KEYWORD


async def test_a_search_attribute_of_another_type_is_a_clear_error(embedded) -> None:
    """One of ours registered by hand with another type: start-up says which and what it
    needs, rather than runs failing later."""
    namespace = await _fresh_namespace(embedded["TEMPORAL_ADDRESS"])
    client = await connect_temporal(embedded["TEMPORAL_ADDRESS"], namespace)
    await client.operator_service.add_search_attributes(
        AddSearchAttributesRequest(
            namespace=namespace,
            search_attributes={"LoomworkTenant": IndexedValueType.INDEXED_VALUE_TYPE_TEXT},
        )
    )
    with pytest.raises(FailedPrecondition, match=r"LoomworkTenant \(TEXT\).*Keyword"):
        await register_search_attributes(client, namespace)
