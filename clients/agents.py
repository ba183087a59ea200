"""`client.agents`: agents and their durable runs (AgentService), and `StreamedText`."""

# `timeout=` on the async methods is the gRPC deadline of the call, as in grpc's own API.
# ruff: noqa: ASYNC109

from __future__ import annotations

from collections.abc import AsyncIterator, Iterable, Mapping, Sequence
from datetime import timedelta
from typing import Any

from google.protobuf import field_mask_pb2, json_format, struct_pb2

from clients.transport import Transport, iter_pages, to_struct
from protos.loomwork.v1 import agent_pb2, agent_pb2_grpc

__all__ = ["AgentsClient", "StreamedText", "client_tool"]


def client_tool(
    name: str,
    parameters_schema: Mapping[str, Any],
    description: str = "",
    *,
    timeout: timedelta | None = None,
) -> agent_pb2.ClientTool:
    """A tool this caller runs itself, declared on a run (`client_tools=`): the run hands
    each call to the caller (`tool_call_requested`) and waits for `submit_tool_results`,
    at most `timeout` per call if given."""
    tool = agent_pb2.ClientTool(
        name=name, description=description, parameters_schema=to_struct(parameters_schema)
    )
    if timeout is not None:
        tool.timeout.FromTimedelta(timeout)
    return tool


class AgentsClient:
    """Runs (generate, stream, watch, approve or reject a tool call, list) and the tenant's
    stored agents (create, read, list, update, delete)."""

    def __init__(self, transport: Transport) -> None:
        self._transport = transport
        self._stub = agent_pb2_grpc.AgentServiceStub(transport.channel)

    # -- runs

    async def generate(
        self,
        agent_name: str,
        prompt: str,
        *,
        thread_id: str = "",
        resource_id: str = "",
        client_run_id: str = "",
        client_tools: Sequence[agent_pb2.ClientTool] = (),
        timeout: float | None = 120.0,
    ) -> agent_pb2.AgentRun:
        """Run an agent to the end and return the run (its output, usage, status); a run
        that waits (approvals, `client_tools` calls: status WAITING) is returned as it waits."""
        request = agent_pb2.GenerateRequest(
            agent_name=agent_name,
            prompt=prompt,
            thread_id=thread_id,
            resource_id=resource_id,
            client_run_id=client_run_id,
            client_tools=client_tools,
        )
        response = await self._transport.call(
            self._stub.Generate, request, agent_pb2.GenerateResponse, timeout
        )
        return response.run

    def stream(
        self,
        agent_name: str,
        prompt: str,
        *,
        thread_id: str = "",
        resource_id: str = "",
        client_run_id: str = "",
        client_tools: Sequence[agent_pb2.ClientTool] = (),
        timeout: float | None = 300.0,
        keep_alives: bool = False,
    ) -> AsyncIterator[agent_pb2.AgentRunEvent]:
        """Run an agent and yield its events as they happen (text deltas, tool calls, …).
        If the stream breaks, `watch_run(run_id, after_event_id=last seen)` continues it.
        A `tool_call_requested` event is a call of one of `client_tools`: answer it with
        `submit_tool_results`. `keep_alives=True` also yields the keep-alives of a quiet
        stream (`keep_alive` set; not events of the run: they move no cursor)."""
        request = agent_pb2.StreamRequest(
            agent_name=agent_name,
            prompt=prompt,
            thread_id=thread_id,
            resource_id=resource_id,
            client_run_id=client_run_id,
            client_tools=client_tools,
        )
        return self._transport.events(self._stub.Stream, request, timeout, keep_alives=keep_alives)

    def stream_object(
        self,
        agent_name: str,
        prompt: str,
        *,
        output_schema: Mapping[str, Any] | None = None,
        thread_id: str = "",
        resource_id: str = "",
        client_run_id: str = "",
        client_tools: Sequence[agent_pb2.ClientTool] = (),
        timeout: float | None = 300.0,
        keep_alives: bool = False,
    ) -> AsyncIterator[agent_pb2.AgentRunEvent]:
        """Run an agent for structured output: object_partial events, then object_final
        (validated against `output_schema`, or the agent's own schema); `keep_alives` as in
        `stream`."""
        request = agent_pb2.StreamObjectRequest(
            agent_name=agent_name,
            prompt=prompt,
            output_schema=to_struct(output_schema),
            thread_id=thread_id,
            resource_id=resource_id,
            client_run_id=client_run_id,
            client_tools=client_tools,
        )
        return self._transport.events(
            self._stub.StreamObject, request, timeout, keep_alives=keep_alives
        )

    def watch_run(
        self,
        run_id: str,
        *,
        after_event_id: int = 0,
        timeout: float | None = 300.0,
        keep_alives: bool = False,
    ) -> AsyncIterator[agent_pb2.AgentRunEvent]:
        """The events of a run after `after_event_id`, then live until it ends;
        `keep_alives` as in `stream`."""
        request = agent_pb2.AgentServiceWatchRunRequest(
            run_id=run_id, after_event_id=after_event_id
        )
        return self._transport.events(
            self._stub.WatchRun, request, timeout, keep_alives=keep_alives
        )

    async def fork_run(
        self,
        run_id: str,
        from_step: int,
        edited_messages: Iterable[Any] = (),
        *,
        client_run_id: str = "",
        timeout: float | None = None,
    ) -> agent_pb2.AgentRun:
        """Start a new run that reuses the steps of `run_id` before `from_step` (their model
        and tool calls are not made again) and calls the model anew from there;
        `edited_messages` (message_pb2.Message) replace what the model sees after the system
        message. Follow it with `watch_run`."""
        request = agent_pb2.AgentServiceForkRunRequest(
            run_id=run_id,
            from_step=from_step,
            edited_messages=list(edited_messages),
            client_run_id=client_run_id,
        )
        response = await self._transport.call(
            self._stub.ForkRun, request, agent_pb2.AgentServiceForkRunResponse, timeout
        )
        return response.run

    async def get_run(self, run_id: str, *, timeout: float | None = None) -> agent_pb2.AgentRun:
        """A run as it stands: status, pending approvals, output once finished."""
        response = await self._transport.call(
            self._stub.GetRun,
            agent_pb2.AgentServiceGetRunRequest(run_id=run_id),
            agent_pb2.AgentServiceGetRunResponse,
            timeout,
        )
        return response.run

    async def list_runs(
        self,
        *,
        agent_name: str = "",
        thread_id: str = "",
        resource_id: str = "",
        statuses: Iterable[Any] = (),  # run_pb2.RunStatus values
        page_size: int = 0,
        page_token: str = "",
        timeout: float | None = None,
    ) -> agent_pb2.AgentServiceListRunsResponse:
        """One page of agent runs (from Temporal visibility), filtered."""
        request = agent_pb2.AgentServiceListRunsRequest(
            agent_name=agent_name,
            thread_id=thread_id,
            resource_id=resource_id,
            statuses=list(statuses),
            page_size=page_size,
            page_token=page_token,
        )
        return await self._transport.call(
            self._stub.ListRuns, request, agent_pb2.AgentServiceListRunsResponse, timeout
        )

    async def approve(
        self,
        run_id: str,
        tool_call_id: str,
        *,
        edited_arguments: Mapping[str, Any] | None = None,
        timeout: float | None = None,
    ) -> agent_pb2.AgentRun:
        """Approve a pending tool call (optionally with edited arguments)."""
        approval = agent_pb2.ToolCallApproval(edited_arguments=to_struct(edited_arguments))
        decision = agent_pb2.ApprovalDecision(tool_call_id=tool_call_id, approve=approval)
        return await self.resume_run(run_id, [decision], timeout=timeout)

    async def reject(
        self, run_id: str, tool_call_id: str, reason: str = "", *, timeout: float | None = None
    ) -> agent_pb2.AgentRun:
        """Reject a pending tool call; the model is told why."""
        rejection = agent_pb2.ToolCallRejection(reason=reason)
        decision = agent_pb2.ApprovalDecision(tool_call_id=tool_call_id, reject=rejection)
        return await self.resume_run(run_id, [decision], timeout=timeout)

    async def resume_run(
        self,
        run_id: str,
        decisions: Sequence[agent_pb2.ApprovalDecision],
        *,
        timeout: float | None = None,
    ) -> agent_pb2.AgentRun:
        """Decide pending tool calls of a waiting run (`approve` and `reject` decide one)."""
        response = await self._transport.call(
            self._stub.ResumeRun,
            agent_pb2.AgentServiceResumeRunRequest(run_id=run_id, decisions=list(decisions)),
            agent_pb2.AgentServiceResumeRunResponse,
            timeout,
        )
        return response.run

    async def submit_tool_results(
        self,
        run_id: str,
        results: Mapping[str, Any] | None = None,
        *,
        errors: Mapping[str, str] | None = None,
        timeout: float | None = None,
    ) -> agent_pb2.AgentRun:
        """Answer client tool calls of a waiting run, by tool call id: `results` (JSON
        values) for the model to read, `errors` for calls that failed."""
        answers = [
            agent_pb2.ClientToolResult(
                tool_call_id=call_id, result=json_format.ParseDict(value, struct_pb2.Value())
            )
            for call_id, value in (results or {}).items()
        ]
        answers += [
            agent_pb2.ClientToolResult(tool_call_id=call_id, error=error)
            for call_id, error in (errors or {}).items()
        ]
        response = await self._transport.call(
            self._stub.SubmitToolResults,
            agent_pb2.SubmitToolResultsRequest(run_id=run_id, results=answers),
            agent_pb2.SubmitToolResultsResponse,
            timeout,
        )
        return response.run

    # -- stored agents

    async def create_agent(
        self, agent: agent_pb2.Agent, *, timeout: float | None = None
    ) -> agent_pb2.Agent:
        """Store an agent for this tenant (instructions, model, tool names, memory, schema)."""
        response = await self._transport.call(
            self._stub.CreateAgent,
            agent_pb2.CreateAgentRequest(agent=agent),
            agent_pb2.CreateAgentResponse,
            timeout,
        )
        return response.agent

    async def get_agent(self, name: str, *, timeout: float | None = None) -> agent_pb2.Agent:
        response = await self._transport.call(
            self._stub.GetAgent,
            agent_pb2.GetAgentRequest(agent_name=name),
            agent_pb2.GetAgentResponse,
            timeout,
        )
        return response.agent

    async def list_agents(self, *, timeout: float | None = None) -> list[agent_pb2.Agent]:
        """Every agent the tenant can run: defined in code and stored by it."""
        pages = iter_pages(
            lambda page_token: self._transport.call(
                self._stub.ListAgents,
                agent_pb2.ListAgentsRequest(page_size=1000, page_token=page_token),
                agent_pb2.ListAgentsResponse,
                timeout,
            )
        )
        return [agent async for page in pages for agent in page.agents]

    async def update_agent(
        self,
        agent: agent_pb2.Agent,
        *,
        fields: Sequence[str] = (),
        timeout: float | None = None,
    ) -> agent_pb2.Agent:
        """Update a stored agent: the `fields` paths, or every field set in `agent`."""
        response = await self._transport.call(
            self._stub.UpdateAgent,
            agent_pb2.UpdateAgentRequest(
                agent=agent, update_mask=field_mask_pb2.FieldMask(paths=list(fields))
            ),
            agent_pb2.UpdateAgentResponse,
            timeout,
        )
        return response.agent

    async def delete_agent(self, name: str, *, timeout: float | None = None) -> None:
        await self._transport.call(
            self._stub.DeleteAgent,
            agent_pb2.DeleteAgentRequest(agent_name=name),
            agent_pb2.DeleteAgentResponse,
            timeout,
        )


class StreamedText:
    """An agent run's answer as it streams: feed it every event (`add`); a step that is
    retried (`step_retrying`) drops the text it had streamed, as the event asks. The text of
    the agents the run calls as tools (events with a `run_path`) is not part of it.

        text = StreamedText()
        async for event in client.agents.stream("assistant", "hi"):
            text.add(event)
        print(text)
    """

    def __init__(self) -> None:
        self._steps: dict[int, list[str]] = {}

    def add(self, event: agent_pb2.AgentRunEvent) -> None:
        if event.run_path:
            return
        kind = event.WhichOneof("event")
        if kind == "text_delta":
            self._steps.setdefault(event.step, []).append(event.text_delta.text)
        elif kind == "step_retrying":
            self._steps.pop(event.step, None)

    def __str__(self) -> str:
        return "".join("".join(self._steps[step]) for step in sorted(self._steps))
