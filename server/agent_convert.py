"""Agent protobuf ↔ domain conversion; protobuf types stop here."""

from __future__ import annotations

from google.protobuf import json_format
from google.rpc import code_pb2

from loomwork.agents import run as events
from loomwork.agents.definitions import AgentDefinition
from loomwork.agents.tools import Tool
from loomwork.llm.chat import ChatMessage, ChatUsage
from protos.loomwork.v1 import agent_pb2, message_pb2, run_pb2
from server import convert

_FINISH = {
    "stop": agent_pb2.AGENT_FINISH_REASON_STOP,
    "max_steps": agent_pb2.AGENT_FINISH_REASON_MAX_STEPS,
    "error": agent_pb2.AGENT_FINISH_REASON_ERROR,
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
}


def agent_to_proto(agent: AgentDefinition) -> agent_pb2.Agent:
    return agent_pb2.Agent(
        name=agent.name,
        description=agent.description,
        instructions=agent.instructions,
        model=agent.model,
        tool_names=agent.tool_names,
        max_steps=agent.max_steps,
        source=agent_pb2.AGENT_SOURCE_CODE,
    )


def tool_to_proto(tool: Tool) -> agent_pb2.Tool:
    out = agent_pb2.Tool(
        name=tool.name, description=tool.description, requires_approval=tool.requires_approval
    )
    out.parameters_schema.update(tool.spec().parameters)
    return out


def usage_to_proto(usage: ChatUsage) -> message_pb2.Usage:
    return message_pb2.Usage(
        input_tokens=usage.prompt_tokens,
        output_tokens=usage.completion_tokens,
        total_tokens=usage.total_tokens,
    )


def _chat_message(target: message_pb2.Message, message: ChatMessage) -> None:
    target.role = convert.ROLE_TO_PROTO[message.role]
    for part in message.parts:
        convert.fill_part(target.parts.add(), part)


def run_error(outcome: events.RunOutcome) -> run_pb2.RunError:
    code, reason = _ERROR_CODES.get(outcome.error_type, (code_pb2.INTERNAL, "RUN_FAILED"))
    return run_pb2.RunError(code=code, reason=reason, message=outcome.error)


def run_to_proto(outcome: events.RunOutcome, workflow_id: str) -> agent_pb2.AgentRun:
    run = agent_pb2.AgentRun(
        id=outcome.run_id,
        agent_name=outcome.agent_name,
        thread_id=outcome.thread_id,
        model=outcome.model,
        status=run_pb2.RUN_STATUS_SUCCEEDED
        if outcome.status == "succeeded"
        else run_pb2.RUN_STATUS_FAILED,
        temporal_workflow_id=workflow_id,
    )
    output = run.output
    for message in outcome.messages:
        _chat_message(output.messages.add(), message)
    output.text = outcome.text
    output.usage.CopyFrom(usage_to_proto(outcome.usage))
    output.finish_reason = _FINISH[outcome.finish_reason]
    output.steps = outcome.steps
    if outcome.status == "failed":
        run.error.CopyFrom(run_error(outcome))
    return run


def event_to_proto(
    run_id: str, event_id: int, event: events.AgentEvent, workflow_id: str
) -> agent_pb2.AgentRunEvent:
    out = agent_pb2.AgentRunEvent(event_id=event_id, run_id=run_id, step=event.step)
    convert.set_timestamp(out.time, event.time)
    if isinstance(event, events.RunStarted):
        out.run_started.CopyFrom(
            agent_pb2.AgentRunStarted(
                agent_name=event.agent_name,
                thread_id=event.thread_id,
                model=event.model,
                max_steps=event.max_steps,
            )
        )
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
    elif isinstance(event, events.UsageEvent):
        out.usage.CopyFrom(usage_to_proto(event.usage))
    elif isinstance(event, events.StepRetrying):
        out.step_retrying.attempt = event.attempt
    elif isinstance(event, events.StepFinished):
        out.step_finished.finish_reason = _STEP_FINISH.get(
            event.finish_reason, agent_pb2.AGENT_FINISH_REASON_UNSPECIFIED
        )
        out.step_finished.usage.CopyFrom(usage_to_proto(event.usage))
    elif isinstance(event, events.RunFinished):
        if event.outcome.status == "succeeded":
            out.run_finished.status = run_pb2.RUN_STATUS_SUCCEEDED
            out.run_finished.output.CopyFrom(run_to_proto(event.outcome, workflow_id).output)
        else:
            out.run_failed.CopyFrom(run_error(event.outcome))
    return out
