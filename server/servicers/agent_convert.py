"""Agent protobuf ↔ domain conversion; protobuf types stop here."""

from __future__ import annotations

from collections.abc import Iterable
from datetime import datetime, timedelta
from typing import Any, cast

from google.protobuf import json_format, struct_pb2
from google.rpc import code_pb2

from loomwork.agents import events
from loomwork.agents import run_models as runs
from loomwork.agents.definitions import AgentDefinition, AgentSource
from loomwork.agents.sub_agents import AGENT_TOOL_PREFIX, agent_tool_spec
from loomwork.errors import Violations
from loomwork.ids import CLIENT_ID_RULE, is_valid_client_id
from loomwork.json_schema import check_object_schema
from loomwork.llm.chat import ChatMessage
from loomwork.memory.settings import MemorySettings, parse_memory_settings
from loomwork.messages import NewMessage, Role, TextPart
from loomwork.retries import retried_failure
from loomwork.tools import Tool
from loomwork.tools.mcp_source import McpToolInfo
from protos.loomwork.v1 import agent_pb2, memory_pb2, message_pb2, run_pb2
from server.agent_runs import AgentRunStart, ThreadResolution
from server.servicers import message_convert
from server.servicers.client_tools_convert import (
    client_tools_from_proto,
    pending_tool_call_to_proto,
)
from server.servicers.guardrails_convert import (
    blocked_error,
    blocked_to_proto,
    processor_data_from_proto,
    processor_to_proto,
)
from server.servicers.message_convert import ROLE_TO_PROTO, fill_part, usage_to_proto
from server.servicers.well_known_convert import set_timestamp, struct_to_dict

MAX_RESOURCE_ID = 256
MAX_SESSION_KEY = 128
MAX_RUN_METADATA = 16 * 1024
RunRequest = agent_pb2.GenerateRequest | agent_pb2.StreamRequest | agent_pb2.StreamObjectRequest

_STATUS = {
    "pending": run_pb2.RUN_STATUS_PENDING,
    "running": run_pb2.RUN_STATUS_RUNNING,
    "waiting": run_pb2.RUN_STATUS_WAITING,
    "succeeded": run_pb2.RUN_STATUS_SUCCEEDED,
    "failed": run_pb2.RUN_STATUS_FAILED,
    "canceled": run_pb2.RUN_STATUS_CANCELED,
    "blocked": run_pb2.RUN_STATUS_BLOCKED,
}
# The LoomworkStatus search attribute's values, by the RunStatus they stand for.
RUN_STATUS_NAMES = {
    run_pb2.RUN_STATUS_PENDING: "PENDING",
    run_pb2.RUN_STATUS_RUNNING: "RUNNING",
    run_pb2.RUN_STATUS_WAITING: "WAITING",
    run_pb2.RUN_STATUS_SUCCEEDED: "SUCCEEDED",
    run_pb2.RUN_STATUS_FAILED: "FAILED",
    run_pb2.RUN_STATUS_CANCELED: "CANCELED",
    run_pb2.RUN_STATUS_BLOCKED: "BLOCKED",
}
RUN_STATUS_FROM_NAME = {name: value for value, name in RUN_STATUS_NAMES.items()}
DEFAULT_WORKING_MEMORY_TEMPLATE = "# User\n- name:\n- preferences:\n- facts:\n"

_FINISH = {
    "canceled": agent_pb2.AGENT_FINISH_REASON_CANCELED,
    "stop": agent_pb2.AGENT_FINISH_REASON_STOP,
    "max_steps": agent_pb2.AGENT_FINISH_REASON_MAX_STEPS,
    "error": agent_pb2.AGENT_FINISH_REASON_ERROR,
    "content_filter": agent_pb2.AGENT_FINISH_REASON_CONTENT_FILTER,
}
_STEP_FINISH = {
    "stop": agent_pb2.AGENT_FINISH_REASON_STOP,
    "length": agent_pb2.AGENT_FINISH_REASON_LENGTH,
    "content_filter": agent_pb2.AGENT_FINISH_REASON_CONTENT_FILTER,
    "tool_calls": agent_pb2.AGENT_FINISH_REASON_TOOL_CALLS,
}
# What a failed run's error type means to a caller.
_ERROR_CODES = {
    "ModelRequestRejected": (code_pb2.FAILED_PRECONDITION, "MODEL_REQUEST_REJECTED"),
    "ModelRateLimited": (code_pb2.RESOURCE_EXHAUSTED, "MODEL_RATE_LIMITED"),
    "ModelUnavailable": (code_pb2.UNAVAILABLE, "RETRIES_EXHAUSTED"),
    "NotFound": (code_pb2.NOT_FOUND, "NOT_FOUND"),
    "InvalidArgument": (code_pb2.INVALID_ARGUMENT, "INVALID_ARGUMENT"),
    # The model's structured answer does not validate against the output schema.
    "OutputSchemaMismatch": (code_pb2.FAILED_PRECONDITION, "OUTPUT_SCHEMA_MISMATCH"),
    # The run's workflow ended from outside: an operator terminated it, or it timed out.
    "Terminated": (code_pb2.ABORTED, "RUN_TERMINATED"),
    "TimedOut": (code_pb2.DEADLINE_EXCEEDED, "RUN_TIMED_OUT"),
}


_SOURCES = {"code": agent_pb2.AGENT_SOURCE_CODE, "api": agent_pb2.AGENT_SOURCE_API}
SOURCE_FROM_PROTO: dict[int, AgentSource | None] = {
    agent_pb2.AGENT_SOURCE_UNSPECIFIED: None,
    agent_pb2.AGENT_SOURCE_CODE: "code",
    agent_pb2.AGENT_SOURCE_API: "api",
}
_SCOPE_TO_PROTO = {
    "thread": memory_pb2.MEMORY_SCOPE_THREAD,
    "resource": memory_pb2.MEMORY_SCOPE_RESOURCE,
}


def memory_to_proto(memory: MemorySettings, read_only: bool) -> agent_pb2.AgentMemorySettings:
    out = agent_pb2.AgentMemorySettings(last_messages=memory.last_messages, read_only=read_only)
    if memory.context_token_limit is not None:
        out.max_context_tokens = memory.context_token_limit
    recall = memory.semantic_recall
    if recall is not None:
        out.semantic_recall.CopyFrom(
            agent_pb2.SemanticRecallSettings(
                enabled=True,
                top_k=recall.top_k,
                message_range=recall.message_range,
                scope=_SCOPE_TO_PROTO[recall.scope.value],
                min_score=recall.min_score,
            )
        )
    wm = memory.working_memory
    if wm is not None:
        out.working_memory.enabled = True
        out.working_memory.scope = _SCOPE_TO_PROTO[wm.scope.value]
        if wm.template is not None:
            out.working_memory.template = wm.template
        elif wm.json_schema is not None:
            out.working_memory.schema.update(wm.json_schema)
    return out


def agent_to_proto(agent: AgentDefinition) -> agent_pb2.Agent:
    out = agent_pb2.Agent(
        name=agent.name,
        description=agent.description,
        instructions=agent.instructions,
        model=agent.model,
        tool_names=agent.tool_names,
        handoffs=agent.handoffs,
        fallback_models=agent.fallback_models,
        memory=memory_to_proto(agent.memory, agent.memory_read_only),
        max_steps=agent.max_steps,
        source=_SOURCES[agent.source],
    )
    settings = agent.model_settings
    if settings.temperature is not None:
        out.model_settings.temperature = settings.temperature
    if settings.top_p is not None:
        out.model_settings.top_p = settings.top_p
    if settings.max_output_tokens is not None:
        out.model_settings.max_output_tokens = settings.max_output_tokens
    if agent.output_schema is not None:
        out.output_schema.update(agent.output_schema)
    if agent.metadata:
        out.metadata.update(agent.metadata)
    if agent.create_time is not None:
        set_timestamp(out.create_time, agent.create_time)
    if agent.update_time is not None:
        set_timestamp(out.update_time, agent.update_time)
    if agent.approval_timeout is not None:
        out.approval_timeout.FromTimedelta(agent.approval_timeout)
    out.input_processors.extend(processor_to_proto(p) for p in agent.input_processors)
    out.output_processors.extend(processor_to_proto(p) for p in agent.output_processors)
    return out


def agent_data_from_proto(agent: agent_pb2.Agent) -> dict[str, Any]:
    """An agent definition's fields from the message (output-only fields ignored), to be
    validated by the catalog; fields left unset keep their defaults."""
    data: dict[str, Any] = {
        "name": agent.name,
        "description": agent.description,
        "instructions": agent.instructions,
        "model": agent.model,
        "tool_names": list(agent.tool_names),
        "handoffs": list(agent.handoffs),
        "fallback_models": list(agent.fallback_models),
    }
    settings = agent.model_settings
    data["model_settings"] = {
        name: getattr(settings, name)
        for name in ("temperature", "top_p", "max_output_tokens")
        if settings.HasField(name)
    }
    if agent.HasField("memory"):
        data["memory"] = memory_override_from_proto(agent.memory, field="agent.memory")
        data["memory_read_only"] = agent.memory.read_only
    if agent.max_steps:
        data["max_steps"] = agent.max_steps
    if agent.HasField("output_schema"):
        data["output_schema"] = output_schema_from_proto(agent.output_schema, "agent.output_schema")
    if agent.HasField("metadata"):
        data["metadata"] = json_format.MessageToDict(agent.metadata)
    if agent.HasField("approval_timeout"):
        data["approval_timeout"] = agent.approval_timeout.ToTimedelta()
    data["input_processors"] = [processor_data_from_proto(p) for p in agent.input_processors]
    data["output_processors"] = [processor_data_from_proto(p) for p in agent.output_processors]
    return data


def output_schema_from_proto(schema: struct_pb2.Struct, field: str) -> dict[str, Any]:
    value = json_format.MessageToDict(schema)
    check_object_schema(value, field)
    return value


def mcp_tool_to_proto(tool: McpToolInfo) -> agent_pb2.Tool:
    """An MCP server's tool, named as agents name it (`mcp:<server>/<tool>`)."""
    out = agent_pb2.Tool(name=tool.ref.tool_name, description=tool.description)
    out.parameters_schema.update(tool.input_schema)
    return out


def any_tool_to_proto(tool: Tool | McpToolInfo | AgentDefinition) -> agent_pb2.Tool:
    """A tool as ListTools lists it: the worker's, an MCP server's, or an agent."""
    if isinstance(tool, Tool):
        return tool_to_proto(tool)
    if isinstance(tool, McpToolInfo):
        return mcp_tool_to_proto(tool)
    return agent_tool_to_proto(tool)


def agent_tool_to_proto(agent: AgentDefinition) -> agent_pb2.Tool:
    """An agent as other agents name it as a tool (`agent:<name>`)."""
    spec = agent_tool_spec(agent)
    out = agent_pb2.Tool(name=f"{AGENT_TOOL_PREFIX}{agent.name}", description=spec.description)
    out.parameters_schema.update(spec.parameters)
    if agent.output_schema is not None:
        out.result_schema.update(agent.output_schema)
    return out


def tool_to_proto(tool: Tool) -> agent_pb2.Tool:
    out = agent_pb2.Tool(
        name=tool.name, description=tool.description, requires_approval=tool.requires_approval
    )
    out.parameters_schema.update(tool.spec().parameters)
    if tool.result_schema is not None:
        out.result_schema.update(tool.result_schema)
    if tool.approval_timeout is not None:
        out.approval_timeout.FromTimedelta(tool.approval_timeout)
    return out


def _chat_message(target: message_pb2.Message, message: ChatMessage | NewMessage) -> None:
    target.role = ROLE_TO_PROTO[message.role]
    for part in message.parts:
        fill_part(target.parts.add(), part)


def _step_retrying(out: agent_pb2.AgentStepRetrying, event: events.StepRetrying) -> None:
    out.attempt = event.attempt
    if event.error_type:
        code, reason = retried_failure(event.error_type)
        out.error.CopyFrom(run_pb2.RunError(code=code, reason=reason, message=event.error))
    if event.backoff_seconds is not None:
        out.backoff.FromTimedelta(timedelta(seconds=event.backoff_seconds))


def run_error(outcome: runs.RunOutcome) -> run_pb2.RunError:
    code, reason = _ERROR_CODES.get(outcome.error_type, (code_pb2.INTERNAL, "RUN_FAILED"))
    error = run_pb2.RunError(code=code, reason=reason, message=outcome.error)
    for violation in outcome.violations:
        error.violations.add(field=violation.field, description=violation.description)
    if outcome.error_details:
        error.details.update(outcome.error_details)
    return error


def _input_message(
    target: message_pb2.Message, message: NewMessage, thread_id: str, saved: datetime | None
) -> None:
    target.id = message.id
    target.thread_id = thread_id
    _chat_message(target, message)
    if message.metadata:
        target.metadata.update(message.metadata)
    if saved is not None:
        set_timestamp(target.create_time, saved)


def _fill_record(run: agent_pb2.AgentRun, record: runs.RunRecord) -> None:
    """The fields a run has from its start: thread, model, input, metadata, times."""
    run.thread_id = record.thread_id
    run.resource_id = record.resource_id
    run.model = record.model
    for message in record.input_messages:
        # Saved as the run started (a stateless run keeps them in the run only).
        _input_message(run.input_messages.add(), message, record.thread_id, record.start_time)
    if record.metadata:
        run.metadata.update(record.metadata)
    if record.create_time is not None:
        set_timestamp(run.create_time, record.create_time)
    if record.start_time is not None:
        set_timestamp(run.start_time, record.start_time)
    run.trace_id = record.trace_id
    run.forked_from = record.forked_from
    run.reused_steps = record.reused_steps


def run_to_proto(outcome: runs.RunOutcome, workflow_id: str) -> agent_pb2.AgentRun:
    run = agent_pb2.AgentRun(
        id=outcome.run_id,
        agent_name=outcome.agent_name,
        status=_STATUS[outcome.status],
        temporal_workflow_id=workflow_id,
    )
    _fill_record(run, outcome)
    if outcome.end_time is not None:
        set_timestamp(run.end_time, outcome.end_time)
    output = run.output
    for message in outcome.messages:
        _chat_message(output.messages.add(), message)
    output.text = outcome.text
    if outcome.object is not None:
        output.object.update(outcome.object)
    output.usage.CopyFrom(usage_to_proto(outcome.usage))
    output.finish_reason = _FINISH[outcome.finish_reason]
    output.steps = outcome.steps
    output.context.tokens_in_context = outcome.context.tokens_in_context
    output.context.messages_recalled = outcome.context.messages_recalled
    output.context.messages_trimmed = outcome.context.messages_trimmed
    output.context.tokens_trimmed = outcome.context.tokens_trimmed
    if outcome.status == "failed":
        run.error.CopyFrom(run_error(outcome))
    elif outcome.status == "blocked" and outcome.blocked is not None:
        run.error.CopyFrom(blocked_error(outcome.blocked))
    elif outcome.status == "canceled":
        run.error.CopyFrom(
            run_pb2.RunError(code=code_pb2.CANCELLED, reason="CANCELED", message=outcome.error)
        )
    return run


def pending_to_proto(pending: runs.PendingApproval) -> agent_pb2.PendingApproval:
    out = agent_pb2.PendingApproval(
        tool_call_id=pending.tool_call_id,
        tool_name=pending.tool_name,
        step=pending.step,
        run_path=pending.run_path,
    )
    out.arguments.update(pending.arguments)
    set_timestamp(out.request_time, pending.request_time)
    if pending.expire_time is not None:
        set_timestamp(out.expire_time, pending.expire_time)
    return out


def state_to_proto(
    run_id: str, agent_name: str, state: runs.RunState, workflow_id: str
) -> agent_pb2.AgentRun:
    run = agent_pb2.AgentRun(
        id=run_id,
        agent_name=agent_name,
        status=_STATUS[state.status],
        temporal_workflow_id=workflow_id,
    )
    _fill_record(run, state)
    run.output.steps = state.steps
    for pending in state.pending:
        run.pending_approvals.append(pending_to_proto(pending))
    for call in state.pending_tool_calls:
        run.pending_tool_calls.append(pending_tool_call_to_proto(call))
    return run


def decisions_from_proto(
    decisions: Iterable[agent_pb2.ApprovalDecision],
) -> list[runs.Decision]:
    out: list[runs.Decision] = []
    violations = Violations()
    for i, decision in enumerate(decisions):
        kind = decision.WhichOneof("decision")
        if not decision.tool_call_id:
            violations.add(f"decisions[{i}].tool_call_id", "is required")
        if kind is None:
            violations.add(f"decisions[{i}]", "set approve or reject")
            continue
        edited = None
        if kind == "approve" and decision.approve.HasField("edited_arguments"):
            edited = json_format.MessageToDict(decision.approve.edited_arguments)
        out.append(
            runs.Decision(
                tool_call_id=decision.tool_call_id,
                approve=kind == "approve",
                reason=decision.reject.reason if kind == "reject" else "",
                edited_arguments=edited,
            )
        )
    violations.raise_if_any()
    return out


def event_to_proto(
    run_id: str, event_id: int, event: events.AgentEvent, workflow_id: str
) -> agent_pb2.AgentRunEvent:
    out = agent_pb2.AgentRunEvent(
        event_id=event_id, run_id=run_id, step=event.step, run_path=event.run_path
    )
    set_timestamp(out.time, event.time)
    if isinstance(event, events.RunStarted):
        out.run_started.CopyFrom(
            agent_pb2.AgentRunStarted(
                agent_name=event.agent_name,
                thread_id=event.thread_id,
                resource_id=event.resource_id,
                model=event.model,
                max_steps=event.max_steps,
                structured_output=event.structured_output,
                trace_id=event.trace_id,
            )
        )
        for message in event.input_messages:
            _input_message(
                out.run_started.input_messages.add(), message, event.thread_id, event.time
            )
    elif isinstance(event, events.RunPending):
        out.run_pending.task_queue = event.task_queue
        out.run_pending.waited.FromTimedelta(timedelta(seconds=event.waited_seconds))
    elif isinstance(event, events.TextDeltaEvent):
        out.text_delta.text = event.delta
    elif isinstance(event, events.ToolCallEvent):
        out.tool_call.tool_call_id = event.call.tool_call_id
        out.tool_call.tool_name = event.call.tool_name
        out.tool_call.arguments.update(event.call.arguments)
    elif isinstance(event, events.ToolResultEvent):
        result = out.tool_result
        result.tool_call_id = event.result.tool_call_id
        result.tool_name = event.result.tool_name
        result.is_error = event.result.is_error
        if event.result.result is not None:
            json_format.ParseDict(event.result.result, result.result)
    elif isinstance(event, events.ObjectPartialEvent):
        out.object_partial.object.update(event.object)
    elif isinstance(event, events.ObjectFinalEvent):
        out.object_final.object.update(event.object)
    elif isinstance(event, events.UsageEvent):
        out.usage.CopyFrom(usage_to_proto(event.usage))
    elif isinstance(event, events.StepRetrying):
        _step_retrying(out.step_retrying, event)
    elif isinstance(event, events.StepFinished):
        out.step_finished.finish_reason = _STEP_FINISH.get(
            event.finish_reason, agent_pb2.AGENT_FINISH_REASON_UNSPECIFIED
        )
        out.step_finished.usage.CopyFrom(usage_to_proto(event.usage))
        out.step_finished.reused = event.reused
        out.step_finished.model = event.model
        for said in event.messages:
            _chat_message(out.step_finished.messages.add(), said)
    elif isinstance(event, events.ApprovalRequested):
        out.approval_requested.CopyFrom(pending_to_proto(event.approval))
        out.approval_requested.run_path = event.run_path
    elif isinstance(event, events.ApprovalResolved):
        resolved = out.approval_resolved
        resolved.tool_call_id = event.tool_call_id
        resolved.tool_name = event.tool_name
        resolved.approved = event.approved
        resolved.reason = event.reason
        resolved.arguments.update(event.arguments)
        resolved.arguments_edited = event.arguments_edited
    elif isinstance(event, events.ToolCallRequested):
        out.tool_call_requested.CopyFrom(pending_tool_call_to_proto(event.call))
        out.tool_call_requested.run_path = event.run_path
    elif isinstance(event, events.Handoff):
        out.handoff.CopyFrom(
            agent_pb2.AgentHandoff(
                from_agent=event.from_agent,
                to_agent=event.to_agent,
                tool_call_id=event.tool_call_id,
                model=event.model,
            )
        )
    elif isinstance(event, events.RunBlocked):
        out.blocked.CopyFrom(blocked_to_proto(event.blocked))
    elif isinstance(event, events.RunFinished):
        if event.outcome.status in ("succeeded", "canceled", "blocked"):
            run = run_to_proto(event.outcome, workflow_id)
            out.run_finished.status = run.status
            out.run_finished.output.CopyFrom(run.output)
            if run.HasField("error"):  # canceled or blocked: why
                out.run_finished.error.CopyFrom(run.error)
        else:
            out.run_failed.CopyFrom(run_error(event.outcome))
    return out


_SCOPES = {
    memory_pb2.MEMORY_SCOPE_THREAD: "thread",
    memory_pb2.MEMORY_SCOPE_RESOURCE: "resource",
    # UNSPECIFIED: the resource when the run has one (the run falls back to its thread).
    memory_pb2.MEMORY_SCOPE_UNSPECIFIED: "resource",
}


def memory_override_from_proto(
    memory: agent_pb2.AgentMemorySettings, *, field: str = "memory"
) -> MemorySettings:
    """A per-call override holding exactly the fields the caller set (`read_only` is read
    on its own: see `read_only_from_proto`)."""
    data: dict[str, Any] = {}
    if memory.HasField("last_messages"):
        data["last_messages"] = memory.last_messages
    if memory.HasField("max_context_tokens"):
        data["context_token_limit"] = memory.max_context_tokens
    if memory.HasField("semantic_recall"):
        recall = memory.semantic_recall
        if recall.HasField("enabled") and not recall.enabled:
            data["semantic_recall"] = None
        else:
            data["semantic_recall"] = {
                "scope": _SCOPES[recall.scope],
                **{
                    name: getattr(recall, name)
                    for name in ("top_k", "message_range", "min_score")
                    if recall.HasField(name)
                },
            }
    if memory.HasField("working_memory"):
        wm = memory.working_memory
        if wm.HasField("enabled") and not wm.enabled:
            data["working_memory"] = None
        else:
            form = wm.WhichOneof("format")
            data["working_memory"] = {
                "scope": _SCOPES[wm.scope],
                "template": wm.template if form == "template" else None,
                "json_schema": json_format.MessageToDict(wm.schema) if form == "schema" else None,
            }
            if form is None:
                data["working_memory"]["template"] = DEFAULT_WORKING_MEMORY_TEMPLATE
    return parse_memory_settings(data, field=field)


def thread_resolution_from_proto(value: int) -> ThreadResolution:
    """A ThreadResolution value (checked to be one) by its name without the prefix."""
    name = agent_pb2.ThreadResolution.Name(value).removeprefix("THREAD_RESOLUTION_")
    return cast(ThreadResolution, name)


def read_only_from_proto(memory: agent_pb2.AgentMemorySettings) -> bool | None:
    return memory.read_only if memory.HasField("read_only") else None


def run_start_from_proto(request: RunRequest) -> AgentRunStart:
    """The run a Generate, Stream or StreamObject call asks for, its fields checked."""
    violations = Violations()
    if not request.agent_name:
        violations.add("agent_name", "is required")
    if bool(request.messages) == bool(request.prompt):
        violations.add("prompt", "give exactly one of messages and prompt")
    if request.client_run_id and not is_valid_client_id(request.client_run_id):
        violations.add("client_run_id", f"must be {CLIENT_ID_RULE}")
    if not 0 <= request.max_steps <= 100:
        violations.add("max_steps", "must be between 0 and 100")
    if request.thread_id and not is_valid_client_id(request.thread_id):
        violations.add("thread_id", f"must be {CLIENT_ID_RULE}")
    if len(request.resource_id) > MAX_RESOURCE_ID:
        violations.add("resource_id", f"must be at most {MAX_RESOURCE_ID} characters")
    if len(request.session_key) > MAX_SESSION_KEY:
        violations.add("session_key", f"must be at most {MAX_SESSION_KEY} characters")
    if request.thread_resolution not in agent_pb2.ThreadResolution.values():
        violations.add("thread_resolution", "is not a ThreadResolution value")
    if request.metadata.ByteSize() > MAX_RUN_METADATA:
        violations.add("metadata", f"must be at most {MAX_RUN_METADATA // 1024} KiB serialized")
    violations.raise_if_any()
    output_schema, override, read_only = None, None, None
    if request.HasField("output_schema"):
        output_schema = output_schema_from_proto(request.output_schema, "output_schema")
    if request.HasField("memory"):
        override = memory_override_from_proto(request.memory)
        read_only = read_only_from_proto(request.memory)
    if request.prompt:
        messages = [NewMessage(role=Role.USER, parts=[TextPart(text=request.prompt)])]
    else:
        messages = message_convert.new_messages_from_proto(request.messages)
    return AgentRunStart(
        agent_name=request.agent_name,
        messages=messages,
        client_run_id=request.client_run_id,
        thread_id=request.thread_id,
        resource_id=request.resource_id,
        session_key=request.session_key,
        thread_resolution=thread_resolution_from_proto(request.thread_resolution),
        max_steps=request.max_steps,
        memory=override,
        memory_read_only=read_only,
        output_schema=output_schema,
        metadata=struct_to_dict(request.metadata),
        client_tools=client_tools_from_proto(request.client_tools),
    )
