"""Activities that every worker should share: never run eagerly.

A worker completing a workflow task asks Temporal to hand the activities it schedules on
its own queue straight back to itself (eager execution: one round trip less). For an
ingestion, which schedules many at once, that gives them all to the one worker running the
workflow; this interceptor turns it off for the workflow types listed, so their activities
go through the task queue to whichever worker polls first.
"""

from __future__ import annotations

from typing import Any

from temporalio import workflow
from temporalio.worker import (
    Interceptor,
    StartActivityInput,
    WorkflowInboundInterceptor,
    WorkflowInterceptorClassInput,
    WorkflowOutboundInterceptor,
)

SPREAD_WORKFLOW_TYPES = frozenset({"RagIngestion"})


class SpreadActivities(Interceptor):
    """Worker interceptor: no eager activities for `SPREAD_WORKFLOW_TYPES`."""

    def workflow_interceptor_class(
        self, input: WorkflowInterceptorClassInput
    ) -> type[WorkflowInboundInterceptor] | None:
        return _Inbound


class _Inbound(WorkflowInboundInterceptor):
    def init(self, outbound: WorkflowOutboundInterceptor) -> None:
        super().init(_Outbound(outbound))


class _Outbound(WorkflowOutboundInterceptor):
    def start_activity(self, input: StartActivityInput) -> workflow.ActivityHandle[Any]:
        if workflow.info().workflow_type in SPREAD_WORKFLOW_TYPES:
            input.disable_eager_execution = True
        return super().start_activity(input)
