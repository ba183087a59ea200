"""`client.workflows`: registered workflow definitions and their runs (WorkflowService)."""

# `timeout=` on the async methods is the gRPC deadline of the call, as in grpc's own API.
# ruff: noqa: ASYNC109

from __future__ import annotations

from collections.abc import AsyncIterator, Mapping, Sequence
from typing import Any

from clients.transport import Transport, iter_pages, to_struct
from protos.loomwork.v1 import workflow_pb2, workflow_pb2_grpc

__all__ = ["WorkflowsClient"]


class WorkflowsClient:
    """Workflow definitions (list, read) and runs (start, read, list, resume, cancel, watch)."""

    def __init__(self, transport: Transport) -> None:
        self._transport = transport
        self._stub = workflow_pb2_grpc.WorkflowServiceStub(transport.channel)

    # -- definitions

    async def list_workflows(self, *, timeout: float | None = None) -> list[workflow_pb2.Workflow]:
        """Every registered workflow definition, with its schemas and steps."""
        pages = iter_pages(
            lambda page_token: self._transport.call(
                self._stub.ListWorkflows,
                workflow_pb2.ListWorkflowsRequest(page_size=1000, page_token=page_token),
                workflow_pb2.ListWorkflowsResponse,
                timeout,
            )
        )
        return [workflow async for page in pages for workflow in page.workflows]

    async def get_workflow(
        self, workflow_id: str, *, timeout: float | None = None
    ) -> workflow_pb2.Workflow:
        response = await self._transport.call(
            self._stub.GetWorkflow,
            workflow_pb2.GetWorkflowRequest(workflow_id=workflow_id),
            workflow_pb2.GetWorkflowResponse,
            timeout,
        )
        return response.workflow

    # -- runs

    async def start_run(
        self,
        workflow_id: str,
        data: Mapping[str, Any] | None = None,
        *,
        client_run_id: str = "",
        metadata: Mapping[str, Any] | None = None,
        timeout: float | None = None,
    ) -> workflow_pb2.WorkflowRun:
        """Start a run (idempotent by `client_run_id`); follow it with `watch_run`."""
        request = workflow_pb2.WorkflowServiceStartRunRequest(
            workflow_id=workflow_id,
            input=to_struct(data),
            client_run_id=client_run_id,
            metadata=to_struct(metadata),
        )
        response = await self._transport.call(
            self._stub.StartRun, request, workflow_pb2.WorkflowServiceStartRunResponse, timeout
        )
        return response.run

    async def fork_run(
        self,
        run_id: str,
        from_step_id: str,
        data: Mapping[str, Any] | None = None,
        *,
        client_run_id: str = "",
        timeout: float | None = None,
    ) -> workflow_pb2.WorkflowRun:
        """Start a new run that reuses the outputs of the steps `run_id` finished before
        `from_step_id` and runs the rest anew; `data` replaces the input when given."""
        request = workflow_pb2.WorkflowServiceForkRunRequest(
            run_id=run_id,
            from_step_id=from_step_id,
            input=to_struct(data),
            client_run_id=client_run_id,
        )
        response = await self._transport.call(
            self._stub.ForkRun, request, workflow_pb2.WorkflowServiceForkRunResponse, timeout
        )
        return response.run

    async def get_run(
        self, run_id: str, *, timeout: float | None = None
    ) -> workflow_pb2.WorkflowRun:
        """A run as it stands: status, every step execution, output once finished."""
        response = await self._transport.call(
            self._stub.GetRun,
            workflow_pb2.WorkflowServiceGetRunRequest(run_id=run_id),
            workflow_pb2.WorkflowServiceGetRunResponse,
            timeout,
        )
        return response.run

    async def list_runs(
        self,
        *,
        workflow_id: str = "",
        statuses: Sequence[workflow_pb2.WorkflowRunStatus] = (),
        schedule_id: str = "",
        page_size: int = 0,
        page_token: str = "",
        timeout: float | None = None,
    ) -> workflow_pb2.WorkflowServiceListRunsResponse:
        """One page of runs, newest first, filtered by workflow, statuses and schedule."""
        request = workflow_pb2.WorkflowServiceListRunsRequest(
            workflow_id=workflow_id,
            statuses=list(statuses),
            schedule_id=schedule_id,
            page_size=page_size,
            page_token=page_token,
        )
        return await self._transport.call(
            self._stub.ListRuns, request, workflow_pb2.WorkflowServiceListRunsResponse, timeout
        )

    async def resume_run(
        self,
        run_id: str,
        step_id: str,
        resume_data: Mapping[str, Any] | None = None,
        *,
        request_id: str = "",
        timeout: float | None = None,
    ) -> workflow_pb2.WorkflowRun:
        """Resume a suspended step with data validated against its resume schema."""
        request = workflow_pb2.WorkflowServiceResumeRunRequest(
            run_id=run_id,
            step_id=step_id,
            resume_data=to_struct(resume_data),
            request_id=request_id,
        )
        response = await self._transport.call(
            self._stub.ResumeRun, request, workflow_pb2.WorkflowServiceResumeRunResponse, timeout
        )
        return response.run

    async def cancel_run(
        self, run_id: str, reason: str = "", *, timeout: float | None = None
    ) -> workflow_pb2.WorkflowRun:
        response = await self._transport.call(
            self._stub.CancelRun,
            workflow_pb2.WorkflowServiceCancelRunRequest(run_id=run_id, reason=reason),
            workflow_pb2.WorkflowServiceCancelRunResponse,
            timeout,
        )
        return response.run

    def watch_run(
        self,
        run_id: str,
        *,
        after_event_id: int = 0,
        timeout: float | None = 300.0,
        keep_alives: bool = False,
    ) -> AsyncIterator[workflow_pb2.WorkflowRunEvent]:
        """The run's step events after `after_event_id`, then live until it ends.
        `keep_alives=True` also yields the keep-alives of a quiet stream (`keep_alive` set;
        not events of the run: they move no cursor)."""
        request = workflow_pb2.WorkflowServiceWatchRunRequest(
            run_id=run_id, after_event_id=after_event_id
        )
        return self._transport.events(
            self._stub.WatchRun, request, timeout, keep_alives=keep_alives
        )
