"""Runs as the worker reports them: runs started and ended by kind (agent, workflow,
ingestion, answer) and status, a log line for each, and the run context of every log line of
an activity (`RunContext`).

Counted and logged from the workflow, except while it replays (nothing is counted or logged
again when a run replays on another worker), labelled with its workflow type and task queue
as well.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

from opentelemetry import metrics
from temporalio import activity, workflow
from temporalio.exceptions import FailureError
from temporalio.worker import (
    ActivityInboundInterceptor,
    ExecuteActivityInput,
    ExecuteWorkflowInput,
    Interceptor,
    WorkflowInboundInterceptor,
    WorkflowInterceptorClassInput,
)

from server.telemetry.logs import RUN_CONTEXT, run_context

log = logging.getLogger(__name__)

# The workflows that are runs, by type, and their kind.
RUN_KINDS = {
    "AgentRun": "agent",
    "DslRun": "workflow",
    "RagIngestion": "ingestion",
    "RagAnswer": "answer",
}
_meter = metrics.get_meter("loomwork.runs")
_started = _meter.create_counter("loomwork.runs.started", "{run}", "Runs started, by kind.")
_ended = _meter.create_counter("loomwork.runs.ended", "{run}", "Runs ended, by kind and status.")


class RunTelemetryInterceptor(Interceptor):
    """The worker's interceptor: run metrics and log lines, and activities' run context.
    `tenant_label`: label run metrics with the tenant (LOOMWORK_METRICS_TENANT_LABEL)."""

    def __init__(self, *, tenant_label: bool) -> None:
        self.tenant_label = tenant_label

    def intercept_activity(self, next: ActivityInboundInterceptor) -> ActivityInboundInterceptor:
        return _ActivityRunContext(next)

    def workflow_interceptor_class(
        self, input: WorkflowInterceptorClassInput
    ) -> type[WorkflowInboundInterceptor]:
        return _WithTenantLabel if self.tenant_label else _RunTelemetry


class _ActivityRunContext(ActivityInboundInterceptor):
    async def execute_activity(self, input: ExecuteActivityInput) -> Any:
        token = RUN_CONTEXT.set(run_context(activity.info().workflow_id or ""))
        try:
            return await self.next.execute_activity(input)
        finally:
            RUN_CONTEXT.reset(token)


class _RunTelemetry(WorkflowInboundInterceptor):
    tenant_label = False

    async def execute_workflow(self, input: ExecuteWorkflowInput) -> Any:
        info = workflow.info()
        kind = RUN_KINDS.get(info.workflow_type)
        context = run_context(info.workflow_id)
        if kind is None or context is None:
            return await self.next.execute_workflow(input)
        labels = {"kind": kind, "workflow_type": info.workflow_type, "task_queue": info.task_queue}
        if self.tenant_label:
            labels["tenant"] = context.tenant
        extra = {
            "tenant": context.tenant,
            "run_id": context.run_id,
            "workflow_id": info.workflow_id,
        }
        if info.continued_run_id is None and not workflow.unsafe.is_replaying():
            _started.add(1, labels)
            log.info("%s run %s started", kind, context.run_id, extra=extra)
        status = ""
        try:
            result = await self.next.execute_workflow(input)
            status = str(getattr(result, "status", "succeeded"))
            return result
        except asyncio.CancelledError:
            status = "canceled"
            raise
        except FailureError:  # fails the run (other errors fail a task, which is retried)
            status = "failed"
            raise
        finally:
            if status and not workflow.unsafe.is_replaying():
                _ended.add(1, {**labels, "status": status})
                log.info("%s run %s ended: %s", kind, context.run_id, status, extra=extra)


class _WithTenantLabel(_RunTelemetry):
    tenant_label = True
