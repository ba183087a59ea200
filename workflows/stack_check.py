"""StackCheck: a worker-side probe of the stack, run as a real Temporal workflow.

It proves the path gRPC server → Temporal → worker → activity → Postgres/Redis
works, and is what `loomwork demo` and the tests run first.
"""

from __future__ import annotations

from datetime import timedelta

from pydantic import BaseModel
from temporalio import workflow
from temporalio.common import RetryPolicy

with workflow.unsafe.imports_passed_through():
    from loomwork.diagnostics import DependencyReport

CHECK_DEPENDENCIES = "check_dependencies"


class StackCheckInput(BaseModel):
    requested_by: str = ""


class StackCheckResult(BaseModel):
    report: DependencyReport
    workflow_id: str


@workflow.defn(name="StackCheck")
class StackCheckWorkflow:
    @workflow.run
    async def run(self, params: StackCheckInput) -> StackCheckResult:
        report = await workflow.execute_activity(
            CHECK_DEPENDENCIES,
            start_to_close_timeout=timedelta(seconds=15),
            retry_policy=RetryPolicy(maximum_attempts=3, initial_interval=timedelta(seconds=1)),
            result_type=DependencyReport,
            summary="check postgres + redis from the worker",
        )
        return StackCheckResult(report=report, workflow_id=workflow.info().workflow_id)
