"""Guardrail processors (Agent.input_processors / output_processors) and a blocked run
between protobuf messages and the domain's models (loomwork.guardrails)."""

from __future__ import annotations

from typing import Any

from google.rpc import code_pb2

from loomwork.agents.run_models import Blocked
from loomwork.guardrails import settings as gr
from protos.loomwork.v1 import guardrails_pb2, run_pb2

GUARDRAIL_TRIPPED = "GUARDRAIL_TRIPPED"

_KIND_TO_PROTO = {
    "email": guardrails_pb2.PII_KIND_EMAIL,
    "phone": guardrails_pb2.PII_KIND_PHONE,
    "card": guardrails_pb2.PII_KIND_CARD,
}
_KIND_FROM_PROTO = {value: name for name, value in _KIND_TO_PROTO.items()}
_STAGES = {
    "input": guardrails_pb2.GUARDRAIL_STAGE_INPUT,
    "output": guardrails_pb2.GUARDRAIL_STAGE_OUTPUT,
}


def processor_to_proto(config: gr.ProcessorConfig) -> guardrails_pb2.GuardrailProcessor:
    out = guardrails_pb2.GuardrailProcessor()
    if isinstance(config, gr.PiiRedaction):
        pii = out.pii_redaction
        pii.kinds.extend(_KIND_TO_PROTO[k] for k in config.kinds)
        for pattern in config.patterns:
            pii.patterns.add(name=pattern.name, regex=pattern.regex)
        pii.action = (
            guardrails_pb2.PII_ACTION_BLOCK
            if config.action == "block"
            else guardrails_pb2.PII_ACTION_REDACT
        )
    elif isinstance(config, gr.PromptInjectionCheck):
        out.prompt_injection.use_model = config.use_model
        out.prompt_injection.model = config.model
    elif isinstance(config, gr.ModerationCheck):
        out.moderation.model = config.model
        out.moderation.categories.extend(config.categories)
    elif isinstance(config, gr.InputTokenLimit):
        out.input_token_limit.max_tokens = config.max_tokens
    elif isinstance(config, gr.ToolCallLimit):
        out.tool_call_limit.max_calls = config.max_calls
    else:
        out.custom.name = config.name
    return out


def processor_data_from_proto(processor: guardrails_pb2.GuardrailProcessor) -> dict[str, Any]:
    """A processor's configuration as data for AgentDefinition (its `kind` is the name of
    the oneof field set, so validation errors name the proto's field path)."""
    kind = processor.WhichOneof("processor")
    if kind == "pii_redaction":
        pii = processor.pii_redaction
        return {
            "kind": kind,
            "kinds": [_KIND_FROM_PROTO[k] for k in pii.kinds if k in _KIND_FROM_PROTO],
            "patterns": [{"name": p.name, "regex": p.regex} for p in pii.patterns],
            "action": "block" if pii.action == guardrails_pb2.PII_ACTION_BLOCK else "redact",
        }
    if kind == "prompt_injection":
        check = processor.prompt_injection
        return {"kind": kind, "use_model": check.use_model, "model": check.model}
    if kind == "moderation":
        mod = processor.moderation
        return {"kind": kind, "model": mod.model, "categories": list(mod.categories)}
    if kind == "input_token_limit":
        return {"kind": kind, "max_tokens": processor.input_token_limit.max_tokens}
    if kind == "tool_call_limit":
        return {"kind": kind, "max_calls": processor.tool_call_limit.max_calls}
    return {"kind": "custom", "name": processor.custom.name}


def blocked_error(blocked: Blocked) -> run_pb2.RunError:
    """A blocked run's error: which processor tripped, and why."""
    error = run_pb2.RunError(
        code=code_pb2.FAILED_PRECONDITION,
        reason=GUARDRAIL_TRIPPED,
        message=f"{blocked.processor}: {blocked.reason}"[:4096],
    )
    error.details.update(
        {"processor": blocked.processor, "reason": blocked.reason, "stage": blocked.stage}
    )
    return error


def blocked_to_proto(blocked: Blocked) -> guardrails_pb2.AgentRunBlocked:
    return guardrails_pb2.AgentRunBlocked(
        processor=blocked.processor, reason=blocked.reason, stage=_STAGES[blocked.stage]
    )
