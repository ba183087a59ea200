"""Typed async Python client for Loomwork's gRPC services.

    async with LoomworkClient("127.0.0.1:50051", token="dev") as client:
        thread = await client.create_thread(resource_id="user-1", title="Support")
        await client.append_messages(thread.id, [text_message("user", "hi")])
        async for message in client.iter_messages(thread.id):
            ...

Every call carries `authorization: Bearer <token>` and a deadline (`timeout` seconds, per client,
overridable per call). Calls that fail with UNAVAILABLE are retried by gRPC itself (exponential
backoff from the channel's service config), so a server that comes up a moment late is reached.
Errors are the plain `grpc.aio.AioRpcError`; `error_details()` extracts the field violations of
an INVALID_ARGUMENT status.
"""

# `timeout=` on the async methods is the gRPC deadline of the call, as in grpc's own API.
# ruff: noqa: ASYNC109

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Mapping, Sequence
from types import TracebackType
from typing import Any, Self

import grpc
from google.protobuf import field_mask_pb2, json_format, struct_pb2
from google.rpc import error_details_pb2, status_pb2

from protos.loomwork.v1 import (
    agent_pb2,
    agent_pb2_grpc,
    integration_pb2,
    integration_pb2_grpc,
    memory_pb2,
    memory_pb2_grpc,
    message_pb2,
    rag_pb2,
    rag_pb2_grpc,
    workflow_pb2,
    workflow_pb2_grpc,
)

__all__ = [
    "DEFAULT_ADDRESS",
    "RETRY_SERVICE_CONFIG",
    "LoomworkClient",
    "StreamedText",
    "error_details",
    "parse_role",
    "rich_status",
    "role_name",
    "text_message",
    "tool_call_message",
    "tool_result_message",
]

DEFAULT_ADDRESS = "127.0.0.1:50051"
DEFAULT_TIMEOUT = 10.0
_DETAILS_KEY = "grpc-status-details-bin"

# gRPC's built-in retries (gRFC A6): a call that fails with UNAVAILABLE before the server answered
# is retried with exponential backoff, up to 5 attempts in all. `name: [{}]` applies the policy to
# every method of every service on the channel.
RETRY_SERVICE_CONFIG: dict[str, Any] = {
    "methodConfig": [
        {
            "name": [{}],
            "retryPolicy": {
                "maxAttempts": 5,
                "initialBackoff": "0.1s",
                "maxBackoff": "2s",
                "backoffMultiplier": 2,
                "retryableStatusCodes": ["UNAVAILABLE"],
            },
        }
    ]
}

_ROLES: dict[str, message_pb2.Role] = {
    "system": message_pb2.ROLE_SYSTEM,
    "user": message_pb2.ROLE_USER,
    "assistant": message_pb2.ROLE_ASSISTANT,
    "tool": message_pb2.ROLE_TOOL,
}


# -- message builders


def parse_role(role: str | int) -> message_pb2.Role:
    """`"user"`, `"ROLE_USER"` or the enum number -> `message_pb2.Role`; ValueError otherwise."""
    if isinstance(role, int):
        for value in _ROLES.values():
            if value == role:
                return value
        raise ValueError(f"unknown role number {role}")
    key = role.strip().lower().removeprefix("role_")
    if key not in _ROLES:
        raise ValueError(f"unknown role {role!r}; expected one of {', '.join(_ROLES)}")
    return _ROLES[key]


def role_name(role: int) -> str:
    """`message_pb2.ROLE_USER` -> `"user"` (`"unspecified"` for 0 or an unknown number)."""
    for name, value in _ROLES.items():
        if value == role:
            return name
    return "unspecified"


def _struct(data: Mapping[str, Any] | None) -> struct_pb2.Struct | None:
    if data is None:
        return None
    struct = struct_pb2.Struct()
    struct.update(dict(data))
    return struct


def _message(
    role: message_pb2.Role,
    parts: Sequence[message_pb2.Part],
    *,
    id: str,
    metadata: Mapping[str, Any] | None,
) -> message_pb2.Message:
    message = message_pb2.Message(id=id, role=role, parts=parts)
    if metadata is not None:
        message.metadata.update(dict(metadata))
    return message


def text_message(
    role: str | int,
    text: str,
    *,
    id: str = "",
    metadata: Mapping[str, Any] | None = None,
) -> message_pb2.Message:
    """A message with one text part. `role` is "system", "user", "assistant" or "tool".

    A non-empty `id` makes the append idempotent: appending the same id again stores it once.
    """
    part = message_pb2.Part(text=message_pb2.TextPart(text=text))
    return _message(parse_role(role), [part], id=id, metadata=metadata)


def tool_call_message(
    tool_call_id: str,
    tool_name: str,
    arguments: Mapping[str, Any] | None = None,
    *,
    text: str = "",
    id: str = "",
    metadata: Mapping[str, Any] | None = None,
) -> message_pb2.Message:
    """An assistant message asking for one tool call, after an optional text part."""
    parts = []
    if text:
        parts.append(message_pb2.Part(text=message_pb2.TextPart(text=text)))
    call = message_pb2.ToolCallPart(tool_call_id=tool_call_id, tool_name=tool_name)
    if arguments is not None:
        call.arguments.update(dict(arguments))
    parts.append(message_pb2.Part(tool_call=call))
    return _message(message_pb2.ROLE_ASSISTANT, parts, id=id, metadata=metadata)


def tool_result_message(
    tool_call_id: str,
    result: Any,
    *,
    tool_name: str = "",
    is_error: bool = False,
    id: str = "",
    metadata: Mapping[str, Any] | None = None,
) -> message_pb2.Message:
    """A tool message answering `tool_call_id`; `result` is any JSON-compatible value."""
    value = struct_pb2.Value()
    json_format.Parse(json.dumps(result), value)
    part = message_pb2.ToolResultPart(
        tool_call_id=tool_call_id, tool_name=tool_name, result=value, is_error=is_error
    )
    return _message(
        message_pb2.ROLE_TOOL, [message_pb2.Part(tool_result=part)], id=id, metadata=metadata
    )


# -- errors


async def _every_page(fetch: Callable[[str], Awaitable[Any]], field: str) -> list[Any]:
    """The items of every page of a List call: `fetch(page_token)` gets one page."""
    items: list[Any] = []
    token = ""
    while True:
        page = await fetch(token)
        items.extend(getattr(page, field))
        token = page.next_page_token
        if not token:
            return items


def rich_status(err: grpc.RpcError) -> status_pb2.Status | None:
    """The `google.rpc.Status` a server attached to an error (`grpc-status-details-bin`), if any.

    Works for `grpc.aio.AioRpcError` and for sync `grpc.Call` errors alike.
    """
    trailing = getattr(err, "trailing_metadata", None)
    metadata = trailing() if callable(trailing) else None
    for key, value in metadata or ():
        if key == _DETAILS_KEY and isinstance(value, bytes):
            try:
                return status_pb2.Status.FromString(value)
            except Exception:  # a malformed trailer is "no details", not a new error
                return None
    return None


def error_details(err: grpc.RpcError) -> list[tuple[str, str]]:
    """`(field, description)` of each google.rpc.BadRequest field violation of an error.

    Empty when the error carries no BadRequest details (e.g. NOT_FOUND, or a connection error).
    """
    status = rich_status(err)
    if status is None:
        return []
    violations: list[tuple[str, str]] = []
    for detail in status.details:
        if detail.Is(error_details_pb2.BadRequest.DESCRIPTOR):
            bad_request = error_details_pb2.BadRequest()
            detail.Unpack(bad_request)
            violations.extend((v.field, v.description) for v in bad_request.field_violations)
    return violations


# -- the client


class StreamedText:
    """An agent run's answer as it streams: feed it every event (`add`); a step that is
    retried (`step_retrying`) drops the text it had streamed, as the event asks.

        text = StreamedText()
        async for event in client.stream("assistant", "hi"):
            text.add(event)
        print(text)
    """

    def __init__(self) -> None:
        self._steps: dict[int, list[str]] = {}

    def add(self, event: agent_pb2.AgentRunEvent) -> None:
        kind = event.WhichOneof("event")
        if kind == "text_delta":
            self._steps.setdefault(event.step, []).append(event.text_delta.text)
        elif kind == "step_retrying":
            self._steps.pop(event.step, None)

    def __str__(self) -> str:
        return "".join("".join(self._steps[step]) for step in sorted(self._steps))


class LoomworkClient:
    """Async client of Loomwork's gRPC services; use as `async with LoomworkClient(...) as c:`.

    `timeout` is the default deadline of each call in seconds (None: no deadline); every method
    takes `timeout=` to override it for that call. `credentials` switches to a TLS channel.
    """

    def __init__(
        self,
        address: str = DEFAULT_ADDRESS,
        token: str | None = None,
        *,
        timeout: float | None = DEFAULT_TIMEOUT,
        wait_for_ready: bool = False,
        credentials: grpc.ChannelCredentials | None = None,
        max_message_bytes: int = 64 * 1024 * 1024,
        options: Sequence[tuple[str, Any]] = (),
    ) -> None:
        self.address = address
        self.timeout = timeout
        self.wait_for_ready = wait_for_ready
        self._metadata: tuple[tuple[str, str], ...] = (
            (("authorization", f"Bearer {token}"),) if token else ()
        )
        channel_options: list[tuple[str, Any]] = [
            ("grpc.enable_retries", 1),
            ("grpc.service_config", json.dumps(RETRY_SERVICE_CONFIG)),
            # Reconnect quickly to a server that was not up yet (the defaults back off to 120 s).
            ("grpc.initial_reconnect_backoff_ms", 100),
            ("grpc.min_reconnect_backoff_ms", 100),
            ("grpc.max_reconnect_backoff_ms", 1000),
            ("grpc.max_receive_message_length", max_message_bytes),
            ("grpc.max_send_message_length", max_message_bytes),
            *options,
        ]
        if credentials is None:
            self._channel = grpc.aio.insecure_channel(address, options=channel_options)
        else:
            self._channel = grpc.aio.secure_channel(address, credentials, options=channel_options)
        self._memory = memory_pb2_grpc.MemoryServiceStub(self._channel)
        self._agents = agent_pb2_grpc.AgentServiceStub(self._channel)
        self._integrations = integration_pb2_grpc.IntegrationServiceStub(self._channel)
        self._workflows = workflow_pb2_grpc.WorkflowServiceStub(self._channel)
        self._rag = rag_pb2_grpc.RagServiceStub(self._channel)

    # -- lifecycle

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()

    async def close(self, grace: float | None = None) -> None:
        """Closes the channel; calls in flight are cancelled (after `grace` seconds if given)."""
        await self._channel.close(grace)

    @property
    def channel(self) -> grpc.aio.Channel:
        """The underlying channel, to build stubs of services this client has no methods for."""
        return self._channel

    def call_options(self, timeout: float | None = None) -> dict[str, Any]:
        """Keyword arguments for a stub call: auth metadata, deadline, wait_for_ready."""
        return {
            "metadata": self._metadata,
            "timeout": self.timeout if timeout is None else timeout,
            "wait_for_ready": self.wait_for_ready,
        }

    # -- MemoryService: threads

    async def create_thread(
        self,
        *,
        resource_id: str = "",
        title: str = "",
        metadata: Mapping[str, Any] | None = None,
        thread_id: str = "",
        timeout: float | None = None,
    ) -> memory_pb2.Thread:
        """Creates a thread; `thread_id` picks its id (ALREADY_EXISTS if taken)."""
        thread = memory_pb2.Thread(resource_id=resource_id, title=title, metadata=_struct(metadata))
        request = memory_pb2.CreateThreadRequest(thread=thread, thread_id=thread_id)
        response: memory_pb2.CreateThreadResponse = await self._memory.CreateThread(
            request, **self.call_options(timeout)
        )
        return response.thread

    async def get_thread(
        self, thread_id: str, *, timeout: float | None = None
    ) -> memory_pb2.Thread:
        request = memory_pb2.GetThreadRequest(thread_id=thread_id)
        response: memory_pb2.GetThreadResponse = await self._memory.GetThread(
            request, **self.call_options(timeout)
        )
        return response.thread

    async def list_threads(
        self,
        *,
        resource_id: str = "",
        page_size: int = 0,
        page_token: str = "",
        timeout: float | None = None,
    ) -> memory_pb2.ListThreadsResponse:
        """One page of threads, most recently created first."""
        request = memory_pb2.ListThreadsRequest(
            resource_id=resource_id, page_size=page_size, page_token=page_token
        )
        response: memory_pb2.ListThreadsResponse = await self._memory.ListThreads(
            request, **self.call_options(timeout)
        )
        return response

    async def iter_threads(
        self,
        *,
        resource_id: str = "",
        page_size: int = 0,
        timeout: float | None = None,
    ) -> AsyncIterator[memory_pb2.Thread]:
        """Every thread (of `resource_id` when set), fetching page after page."""
        page_token = ""
        while True:
            page = await self.list_threads(
                resource_id=resource_id, page_size=page_size, page_token=page_token, timeout=timeout
            )
            for thread in page.threads:
                yield thread
            if not page.next_page_token:
                return
            page_token = page.next_page_token

    async def update_thread(
        self,
        thread_id: str,
        *,
        title: str | None = None,
        metadata: Mapping[str, Any] | None = None,
        timeout: float | None = None,
    ) -> memory_pb2.Thread:
        """Sets the given fields (None leaves a field as it is; `metadata={}` clears it)."""
        thread = memory_pb2.Thread(id=thread_id)
        paths = []
        if title is not None:
            thread.title = title
            paths.append("title")
        if metadata is not None:
            thread.metadata.update(dict(metadata))
            paths.append("metadata")
        request = memory_pb2.UpdateThreadRequest(
            thread=thread, update_mask=field_mask_pb2.FieldMask(paths=paths)
        )
        response: memory_pb2.UpdateThreadResponse = await self._memory.UpdateThread(
            request, **self.call_options(timeout)
        )
        return response.thread

    async def delete_thread(self, thread_id: str, *, timeout: float | None = None) -> None:
        """Deletes a thread and all its messages."""
        request = memory_pb2.DeleteThreadRequest(thread_id=thread_id)
        await self._memory.DeleteThread(request, **self.call_options(timeout))

    # -- MemoryService: messages

    async def append_messages(
        self,
        thread_id: str,
        messages: Iterable[message_pb2.Message],
        *,
        timeout: float | None = None,
    ) -> list[message_pb2.Message]:
        """Appends messages (all or none) and returns them as stored, in request order.

        Build messages with `text_message`, `tool_call_message`, `tool_result_message`, or as
        `message_pb2.Message` directly. A message id stored before returns the stored message.
        """
        request = memory_pb2.AppendMessagesRequest(thread_id=thread_id, messages=list(messages))
        response: memory_pb2.AppendMessagesResponse = await self._memory.AppendMessages(
            request, **self.call_options(timeout)
        )
        return list(response.messages)

    async def list_messages(
        self,
        thread_id: str,
        *,
        last_n: int = 0,
        page_size: int = 0,
        page_token: str = "",
        timeout: float | None = None,
    ) -> memory_pb2.ListMessagesResponse:
        """The newest `last_n` messages (chronological), or one page of all, oldest first."""
        request = memory_pb2.ListMessagesRequest(
            thread_id=thread_id, last_n=last_n, page_size=page_size, page_token=page_token
        )
        response: memory_pb2.ListMessagesResponse = await self._memory.ListMessages(
            request, **self.call_options(timeout)
        )
        return response

    async def search_messages(
        self,
        query: str,
        *,
        thread_id: str = "",
        resource_id: str = "",
        top_k: int = 0,
        message_range: int = 0,
        min_score: float = 0.0,
        timeout: float | None = None,
    ) -> memory_pb2.SearchMessagesResponse:
        """Messages closest in meaning to `query`, in one thread or (without it) a resource.

        Messages become searchable a moment after they are appended (indexing runs in the
        background on the worker)."""
        scope = memory_pb2.MEMORY_SCOPE_THREAD if thread_id else memory_pb2.MEMORY_SCOPE_RESOURCE
        request = memory_pb2.SearchMessagesRequest(
            query=query,
            scope=scope,
            thread_id=thread_id,
            resource_id=resource_id,
            top_k=top_k,
            message_range=message_range,
            min_score=min_score,
        )
        response: memory_pb2.SearchMessagesResponse = await self._memory.SearchMessages(
            request, **self.call_options(timeout)
        )
        return response

    async def iter_messages(
        self,
        thread_id: str,
        *,
        page_size: int = 0,
        timeout: float | None = None,
    ) -> AsyncIterator[message_pb2.Message]:
        """Every message of a thread, oldest first, fetching page after page."""
        page_token = ""
        while True:
            page = await self.list_messages(
                thread_id, page_size=page_size, page_token=page_token, timeout=timeout
            )
            for message in page.messages:
                yield message
            if not page.next_page_token:
                return
            page_token = page.next_page_token

    # -- AgentService

    async def generate(
        self,
        agent_name: str,
        prompt: str,
        *,
        thread_id: str = "",
        resource_id: str = "",
        client_run_id: str = "",
        timeout: float | None = 120.0,
    ) -> agent_pb2.AgentRun:
        """Run an agent to the end and return the run (its output, usage, status)."""
        request = agent_pb2.GenerateRequest(
            agent_name=agent_name,
            prompt=prompt,
            thread_id=thread_id,
            resource_id=resource_id,
            client_run_id=client_run_id,
        )
        response: agent_pb2.GenerateResponse = await self._agents.Generate(
            request, **self.call_options(timeout)
        )
        return response.run

    async def stream(
        self,
        agent_name: str,
        prompt: str,
        *,
        thread_id: str = "",
        resource_id: str = "",
        client_run_id: str = "",
        timeout: float | None = 300.0,
    ) -> AsyncIterator[agent_pb2.AgentRunEvent]:
        """Run an agent and yield its events as they happen (text deltas, tool calls, …).
        If the stream breaks, `watch_run(run_id, after_event_id=last seen)` continues it."""
        request = agent_pb2.StreamRequest(
            agent_name=agent_name,
            prompt=prompt,
            thread_id=thread_id,
            resource_id=resource_id,
            client_run_id=client_run_id,
        )
        async for response in self._agents.Stream(request, **self.call_options(timeout)):
            yield response.event

    async def watch_run(
        self, run_id: str, *, after_event_id: int = 0, timeout: float | None = 300.0
    ) -> AsyncIterator[agent_pb2.AgentRunEvent]:
        """The events of a run after `after_event_id`, then live until it ends."""
        request = agent_pb2.AgentServiceWatchRunRequest(
            run_id=run_id, after_event_id=after_event_id
        )
        async for response in self._agents.WatchRun(request, **self.call_options(timeout)):
            yield response.event

    async def get_run(self, run_id: str, *, timeout: float | None = None) -> agent_pb2.AgentRun:
        """A run as it stands: status, pending approvals, output once finished."""
        response: agent_pb2.AgentServiceGetRunResponse = await self._agents.GetRun(
            agent_pb2.AgentServiceGetRunRequest(run_id=run_id), **self.call_options(timeout)
        )
        return response.run

    async def approve(
        self,
        run_id: str,
        tool_call_id: str,
        *,
        edited_arguments: Mapping[str, Any] | None = None,
        timeout: float | None = None,
    ) -> agent_pb2.AgentRun:
        """Approve a pending tool call (optionally with edited arguments)."""
        approval = agent_pb2.ToolCallApproval(edited_arguments=_struct(edited_arguments))
        decision = agent_pb2.ApprovalDecision(tool_call_id=tool_call_id, approve=approval)
        return await self._resume(run_id, decision, timeout)

    async def reject(
        self, run_id: str, tool_call_id: str, reason: str = "", *, timeout: float | None = None
    ) -> agent_pb2.AgentRun:
        """Reject a pending tool call; the model is told why."""
        rejection = agent_pb2.ToolCallRejection(reason=reason)
        decision = agent_pb2.ApprovalDecision(tool_call_id=tool_call_id, reject=rejection)
        return await self._resume(run_id, decision, timeout)

    async def _resume(
        self, run_id: str, decision: agent_pb2.ApprovalDecision, timeout: float | None
    ) -> agent_pb2.AgentRun:
        response: agent_pb2.AgentServiceResumeRunResponse = await self._agents.ResumeRun(
            agent_pb2.AgentServiceResumeRunRequest(run_id=run_id, decisions=[decision]),
            **self.call_options(timeout),
        )
        return response.run

    async def stream_object(
        self,
        agent_name: str,
        prompt: str,
        *,
        output_schema: Mapping[str, Any] | None = None,
        thread_id: str = "",
        resource_id: str = "",
        client_run_id: str = "",
        timeout: float | None = 300.0,
    ) -> AsyncIterator[agent_pb2.AgentRunEvent]:
        """Run an agent for structured output: object_partial events, then object_final
        (validated against `output_schema`, or the agent's own schema)."""
        request = agent_pb2.StreamObjectRequest(
            agent_name=agent_name,
            prompt=prompt,
            output_schema=_struct(output_schema),
            thread_id=thread_id,
            resource_id=resource_id,
            client_run_id=client_run_id,
        )
        async for response in self._agents.StreamObject(request, **self.call_options(timeout)):
            yield response.event

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
        response: agent_pb2.AgentServiceListRunsResponse = await self._agents.ListRuns(
            agent_pb2.AgentServiceListRunsRequest(
                agent_name=agent_name,
                thread_id=thread_id,
                resource_id=resource_id,
                statuses=list(statuses),
                page_size=page_size,
                page_token=page_token,
            ),
            **self.call_options(timeout),
        )
        return response

    async def create_agent(
        self, agent: agent_pb2.Agent, *, timeout: float | None = None
    ) -> agent_pb2.Agent:
        """Store an agent for this tenant (instructions, model, tool names, memory, schema)."""
        response: agent_pb2.CreateAgentResponse = await self._agents.CreateAgent(
            agent_pb2.CreateAgentRequest(agent=agent), **self.call_options(timeout)
        )
        return response.agent

    async def get_agent(self, name: str, *, timeout: float | None = None) -> agent_pb2.Agent:
        response: agent_pb2.GetAgentResponse = await self._agents.GetAgent(
            agent_pb2.GetAgentRequest(agent_name=name), **self.call_options(timeout)
        )
        return response.agent

    async def list_agents(self, *, timeout: float | None = None) -> list[agent_pb2.Agent]:
        """Every agent the tenant can run: defined in code and stored by it."""
        return await _every_page(
            lambda token: self._agents.ListAgents(
                agent_pb2.ListAgentsRequest(page_size=1000, page_token=token),
                **self.call_options(timeout),
            ),
            "agents",
        )

    async def update_agent(
        self,
        agent: agent_pb2.Agent,
        *,
        fields: Sequence[str] = (),
        timeout: float | None = None,
    ) -> agent_pb2.Agent:
        """Update a stored agent: the `fields` paths, or every field set in `agent`."""
        response: agent_pb2.UpdateAgentResponse = await self._agents.UpdateAgent(
            agent_pb2.UpdateAgentRequest(
                agent=agent, update_mask=field_mask_pb2.FieldMask(paths=list(fields))
            ),
            **self.call_options(timeout),
        )
        return response.agent

    async def delete_agent(self, name: str, *, timeout: float | None = None) -> None:
        await self._agents.DeleteAgent(
            agent_pb2.DeleteAgentRequest(agent_name=name), **self.call_options(timeout)
        )

    # -- WorkflowService: definitions and runs

    async def list_workflows(self, *, timeout: float | None = None) -> list[workflow_pb2.Workflow]:
        """Every registered workflow definition, with its schemas and steps."""
        return await _every_page(
            lambda token: self._workflows.ListWorkflows(
                workflow_pb2.ListWorkflowsRequest(page_size=1000, page_token=token),
                **self.call_options(timeout),
            ),
            "workflows",
        )

    async def get_workflow(
        self, workflow_id: str, *, timeout: float | None = None
    ) -> workflow_pb2.Workflow:
        response: workflow_pb2.GetWorkflowResponse = await self._workflows.GetWorkflow(
            workflow_pb2.GetWorkflowRequest(workflow_id=workflow_id), **self.call_options(timeout)
        )
        return response.workflow

    async def start_workflow_run(
        self,
        workflow_id: str,
        data: Mapping[str, Any] | None = None,
        *,
        client_run_id: str = "",
        metadata: Mapping[str, Any] | None = None,
        timeout: float | None = None,
    ) -> workflow_pb2.WorkflowRun:
        """Start a run (idempotent by `client_run_id`); follow it with watch_workflow_run."""
        response: workflow_pb2.WorkflowServiceStartRunResponse = await self._workflows.StartRun(
            workflow_pb2.WorkflowServiceStartRunRequest(
                workflow_id=workflow_id,
                input=_struct(data),
                client_run_id=client_run_id,
                metadata=_struct(metadata),
            ),
            **self.call_options(timeout),
        )
        return response.run

    async def get_workflow_run(
        self, run_id: str, *, timeout: float | None = None
    ) -> workflow_pb2.WorkflowRun:
        """A run as it stands: status, every step execution, output once finished."""
        response: workflow_pb2.WorkflowServiceGetRunResponse = await self._workflows.GetRun(
            workflow_pb2.WorkflowServiceGetRunRequest(run_id=run_id), **self.call_options(timeout)
        )
        return response.run

    async def list_workflow_runs(
        self,
        *,
        workflow_id: str = "",
        statuses: Sequence[workflow_pb2.WorkflowRunStatus] = (),
        page_size: int = 0,
        page_token: str = "",
        timeout: float | None = None,
    ) -> workflow_pb2.WorkflowServiceListRunsResponse:
        """One page of runs, newest first, filtered by workflow and statuses."""
        response: workflow_pb2.WorkflowServiceListRunsResponse = await self._workflows.ListRuns(
            workflow_pb2.WorkflowServiceListRunsRequest(
                workflow_id=workflow_id,
                statuses=list(statuses),
                page_size=page_size,
                page_token=page_token,
            ),
            **self.call_options(timeout),
        )
        return response

    async def resume_workflow_run(
        self,
        run_id: str,
        step_id: str,
        resume_data: Mapping[str, Any] | None = None,
        *,
        request_id: str = "",
        timeout: float | None = None,
    ) -> workflow_pb2.WorkflowRun:
        """Resume a suspended step with data validated against its resume schema."""
        response: workflow_pb2.WorkflowServiceResumeRunResponse = await self._workflows.ResumeRun(
            workflow_pb2.WorkflowServiceResumeRunRequest(
                run_id=run_id,
                step_id=step_id,
                resume_data=_struct(resume_data),
                request_id=request_id,
            ),
            **self.call_options(timeout),
        )
        return response.run

    async def cancel_workflow_run(
        self, run_id: str, reason: str = "", *, timeout: float | None = None
    ) -> workflow_pb2.WorkflowRun:
        response: workflow_pb2.WorkflowServiceCancelRunResponse = await self._workflows.CancelRun(
            workflow_pb2.WorkflowServiceCancelRunRequest(run_id=run_id, reason=reason),
            **self.call_options(timeout),
        )
        return response.run

    async def watch_workflow_run(
        self, run_id: str, *, after_event_id: int = 0, timeout: float | None = 300.0
    ) -> AsyncIterator[workflow_pb2.WorkflowRunEvent]:
        """The run's step events after `after_event_id`, then live until it ends."""
        request = workflow_pb2.WorkflowServiceWatchRunRequest(
            run_id=run_id, after_event_id=after_event_id
        )
        async for response in self._workflows.WatchRun(request, **self.call_options(timeout)):
            yield response.event

    # -- integrations: webhooks and OAuth connections

    async def create_webhook_source(
        self,
        secret: str,
        *,
        routes: Sequence[integration_pb2.WebhookRoute] = (),
        display_name: str = "",
        timeout: float | None = None,
    ) -> integration_pb2.WebhookSource:
        """A webhook source; POST signed events to its `path` on the HTTP endpoint."""
        source = integration_pb2.WebhookSource(
            secret=secret, routes=list(routes), display_name=display_name
        )
        response: integration_pb2.CreateWebhookSourceResponse = (
            await self._integrations.CreateWebhookSource(
                integration_pb2.CreateWebhookSourceRequest(webhook_source=source),
                **self.call_options(timeout),
            )
        )
        return response.webhook_source

    async def list_webhook_deliveries(
        self,
        webhook_source_id: str = "",
        *,
        page_size: int = 0,
        page_token: str = "",
        timeout: float | None = None,
    ) -> integration_pb2.ListWebhookDeliveriesResponse:
        response: integration_pb2.ListWebhookDeliveriesResponse = (
            await self._integrations.ListWebhookDeliveries(
                integration_pb2.ListWebhookDeliveriesRequest(
                    webhook_source_id=webhook_source_id, page_size=page_size, page_token=page_token
                ),
                **self.call_options(timeout),
            )
        )
        return response

    async def create_oauth_provider(
        self, provider: integration_pb2.OAuthProvider, *, timeout: float | None = None
    ) -> integration_pb2.OAuthProvider:
        response: integration_pb2.CreateOAuthProviderResponse = (
            await self._integrations.CreateOAuthProvider(
                integration_pb2.CreateOAuthProviderRequest(oauth_provider=provider),
                **self.call_options(timeout),
            )
        )
        return response.oauth_provider

    async def start_authorization(
        self,
        oauth_provider_id: str,
        *,
        scopes: Sequence[str] = (),
        label: str = "",
        timeout: float | None = None,
    ) -> integration_pb2.StartAuthorizationResponse:
        """The URL to send the user to; the connection exists once they come back."""
        response: integration_pb2.StartAuthorizationResponse = (
            await self._integrations.StartAuthorization(
                integration_pb2.StartAuthorizationRequest(
                    oauth_provider_id=oauth_provider_id, scopes=list(scopes), label=label
                ),
                **self.call_options(timeout),
            )
        )
        return response

    async def list_connections(
        self,
        oauth_provider_id: str = "",
        *,
        page_size: int = 0,
        page_token: str = "",
        timeout: float | None = None,
    ) -> integration_pb2.ListConnectionsResponse:
        response: integration_pb2.ListConnectionsResponse = (
            await self._integrations.ListConnections(
                integration_pb2.ListConnectionsRequest(
                    oauth_provider_id=oauth_provider_id, page_size=page_size, page_token=page_token
                ),
                **self.call_options(timeout),
            )
        )
        return response

    async def get_connection(
        self, connection_id: str, *, timeout: float | None = None
    ) -> integration_pb2.Connection:
        response: integration_pb2.GetConnectionResponse = await self._integrations.GetConnection(
            integration_pb2.GetConnectionRequest(connection_id=connection_id),
            **self.call_options(timeout),
        )
        return response.connection

    async def delete_connection(self, connection_id: str, *, timeout: float | None = None) -> None:
        await self._integrations.DeleteConnection(
            integration_pb2.DeleteConnectionRequest(connection_id=connection_id),
            **self.call_options(timeout),
        )

    # -- RagService

    async def create_index(
        self,
        name: str,
        *,
        description: str = "",
        embedding_model: str = "",
        dimension: int = 0,
        metadata: Mapping[str, Any] | None = None,
        timeout: float | None = None,
    ) -> rag_pb2.Index:
        """Creates a vector index (embedding model and dimension default to the server's)."""
        index = rag_pb2.Index(
            name=name,
            description=description,
            embedding_model=embedding_model,
            dimension=dimension,
            metadata=_struct(metadata),
        )
        response: rag_pb2.CreateIndexResponse = await self._rag.CreateIndex(
            rag_pb2.CreateIndexRequest(index=index), **self.call_options(timeout)
        )
        return response.index

    async def get_index(self, name: str, *, timeout: float | None = None) -> rag_pb2.Index:
        response: rag_pb2.GetIndexResponse = await self._rag.GetIndex(
            rag_pb2.GetIndexRequest(index_name=name), **self.call_options(timeout)
        )
        return response.index

    async def list_indexes(self, *, timeout: float | None = None) -> list[rag_pb2.Index]:
        """Every index of the tenant, by name."""
        return await _every_page(
            lambda token: self._rag.ListIndexes(
                rag_pb2.ListIndexesRequest(page_size=1000, page_token=token),
                **self.call_options(timeout),
            ),
            "indexes",
        )

    async def delete_index(self, name: str, *, timeout: float | None = None) -> None:
        await self._rag.DeleteIndex(
            rag_pb2.DeleteIndexRequest(index_name=name), **self.call_options(timeout)
        )

    async def ingest_documents(
        self,
        index_name: str,
        documents: Sequence[rag_pb2.DocumentInput],
        *,
        chunking: rag_pb2.ChunkingOptions | None = None,
        client_ingestion_id: str = "",
        timeout: float | None = None,
    ) -> rag_pb2.Ingestion:
        """Starts an ingestion of inline documents; follow it with `watch_ingestion`."""
        response: rag_pb2.IngestDocumentsResponse = await self._rag.IngestDocuments(
            rag_pb2.IngestDocumentsRequest(
                index_name=index_name,
                documents=documents,
                chunking=chunking,
                client_ingestion_id=client_ingestion_id,
            ),
            **self.call_options(timeout),
        )
        return response.ingestion

    async def upload_document(
        self,
        index_name: str,
        data: bytes,
        document: rag_pb2.DocumentInput | None = None,
        *,
        chunking: rag_pb2.ChunkingOptions | None = None,
        piece_bytes: int = 1024 * 1024,
        timeout: float | None = None,
    ) -> rag_pb2.Ingestion:
        """Uploads one large document as a client stream (header, then 1 MiB pieces)."""
        import hashlib

        async def requests() -> AsyncIterator[rag_pb2.UploadDocumentRequest]:
            yield rag_pb2.UploadDocumentRequest(
                header=rag_pb2.UploadDocumentHeader(
                    index_name=index_name,
                    document=document,
                    chunking=chunking,
                    size_bytes=len(data),
                    sha256=hashlib.sha256(data).hexdigest(),
                )
            )
            for start in range(0, len(data), piece_bytes):
                yield rag_pb2.UploadDocumentRequest(chunk=data[start : start + piece_bytes])

        response: rag_pb2.UploadDocumentResponse = await self._rag.UploadDocument(
            requests(), **self.call_options(timeout)
        )
        return response.ingestion

    async def get_ingestion(
        self, ingestion_id: str, *, timeout: float | None = None
    ) -> rag_pb2.Ingestion:
        response: rag_pb2.GetIngestionResponse = await self._rag.GetIngestion(
            rag_pb2.GetIngestionRequest(ingestion_id=ingestion_id), **self.call_options(timeout)
        )
        return response.ingestion

    async def watch_ingestion(
        self, ingestion_id: str, after_event_id: int = 0
    ) -> AsyncIterator[rag_pb2.IngestionEvent]:
        """The ingestion's progress events until its `finished` event (no deadline)."""
        options = self.call_options()
        options["timeout"] = None
        async for response in self._rag.WatchIngestion(
            rag_pb2.WatchIngestionRequest(ingestion_id=ingestion_id, after_event_id=after_event_id),
            **options,
        ):
            yield response.event

    async def cancel_ingestion(
        self, ingestion_id: str, *, timeout: float | None = None
    ) -> rag_pb2.Ingestion:
        response: rag_pb2.CancelIngestionResponse = await self._rag.CancelIngestion(
            rag_pb2.CancelIngestionRequest(ingestion_id=ingestion_id), **self.call_options(timeout)
        )
        return response.ingestion

    async def list_documents(
        self, index_name: str, *, timeout: float | None = None
    ) -> list[rag_pb2.Document]:
        """Every document of an index."""
        return await _every_page(
            lambda token: self._rag.ListDocuments(
                rag_pb2.ListDocumentsRequest(
                    index_name=index_name, page_size=1000, page_token=token
                ),
                **self.call_options(timeout),
            ),
            "documents",
        )

    async def delete_document(
        self, index_name: str, document_id: str, *, timeout: float | None = None
    ) -> None:
        await self._rag.DeleteDocument(
            rag_pb2.DeleteDocumentRequest(index_name=index_name, document_id=document_id),
            **self.call_options(timeout),
        )

    async def query(
        self,
        index_name: str,
        query: str,
        retrieval: rag_pb2.RetrievalOptions | None = None,
        *,
        timeout: float | None = None,
    ) -> list[rag_pb2.ScoredChunk]:
        """The best chunks for `query`, best first."""
        response: rag_pb2.QueryResponse = await self._rag.Query(
            rag_pb2.QueryRequest(index_name=index_name, query=query, retrieval=retrieval),
            **self.call_options(timeout),
        )
        return list(response.results)

    async def answer(
        self,
        index_name: str,
        query: str,
        retrieval: rag_pb2.RetrievalOptions | None = None,
        *,
        model: str = "",
        client_answer_id: str = "",
    ) -> AsyncIterator[rag_pb2.AnswerEvent]:
        """Streams an answer's events (retrieval, text deltas, citations, finished)."""
        options = self.call_options()
        options["timeout"] = None
        async for response in self._rag.Answer(
            rag_pb2.AnswerRequest(
                index_name=index_name,
                query=query,
                retrieval=retrieval,
                model=model,
                client_answer_id=client_answer_id,
            ),
            **options,
        ):
            yield response.event
