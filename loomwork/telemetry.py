"""Spans and metrics of the domain's own work, through the OpenTelemetry API only.

Nothing here configures anything: until a process installs the SDK (`server/telemetry/`),
spans do not record and instruments do nothing, for the cost of a function call. Names and
attributes follow the OpenTelemetry semantic conventions where there are some (GenAI: the
model call, a tool's execution, embeddings), else they are `loomwork.*`.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

from opentelemetry import context as otel_context
from opentelemetry import metrics, propagate, trace
from opentelemetry.trace import Span, SpanKind
from opentelemetry.util.types import AttributeValue

TRACER = trace.get_tracer("loomwork")
METER = metrics.get_meter("loomwork")

# The attribute naming a tenant on a metric; a process keeps it only when asked to
# (LOOMWORK_METRICS_TENANT_LABEL, see server/telemetry/metrics.py).
TENANT = "tenant"

_model_duration = METER.create_histogram(
    "gen_ai.client.operation.duration",
    unit="s",
    description="Duration of a model call, by operation and model.",
    explicit_bucket_boundaries_advisory=[
        0.01,
        0.02,
        0.04,
        0.08,
        0.16,
        0.32,
        0.64,
        1.28,
        2.56,
        5.12,
        10.24,
        20.48,
        40.96,
        81.92,
    ],
)
_model_tokens = METER.create_histogram(
    "gen_ai.client.token.usage",
    unit="{token}",
    description="Tokens of a model call, by model and token type (input, output).",
    explicit_bucket_boundaries_advisory=[
        1,
        4,
        16,
        64,
        256,
        1024,
        4096,
        16384,
        65536,
        262144,
        1048576,
        4194304,
    ],
)
_tool_calls = METER.create_counter(
    "loomwork.tool.calls",
    unit="{call}",
    description="Tool calls, by tool and outcome (ok, error: an error result, failed: raised).",
)


def current_trace_id() -> str:
    """The id of the trace the caller runs in (32 hex digits), or "" when there is none."""
    context = trace.get_current_span().get_span_context()
    return format(context.trace_id, "032x") if context.is_valid else ""


def trace_carrier() -> dict[str, str]:
    """The current trace context as W3C headers: for work another process begins on this
    one's behalf (`continuing`)."""
    carrier: dict[str, str] = {}
    propagate.inject(carrier)
    return carrier


@contextmanager
def continuing(carrier: dict[str, str]) -> Iterator[None]:
    """Work begun in here belongs to the trace `carrier` names (`trace_carrier`'s)."""
    token = otel_context.attach(propagate.extract(carrier))
    try:
        yield
    finally:
        otel_context.detach(token)


@dataclass
class ModelCall:
    """The span of one model call, to be told what the model answered."""

    span: Span
    attributes: dict[str, AttributeValue]
    input_tokens: int = 0
    output_tokens: int = 0

    def answered(
        self, *, model: str, finish_reason: str, input_tokens: int, output_tokens: int
    ) -> None:
        """What the model answered: its own model name, why it stopped, its token counts."""
        self.input_tokens, self.output_tokens = input_tokens, output_tokens
        if model:
            self.attributes["gen_ai.response.model"] = model
        if self.span.is_recording():
            self.span.set_attributes(
                {
                    "gen_ai.response.model": model,
                    "gen_ai.response.finish_reasons": [finish_reason] if finish_reason else [],
                    "gen_ai.usage.input_tokens": input_tokens,
                    "gen_ai.usage.output_tokens": output_tokens,
                }
            )


@contextmanager
def model_call(
    model: str,
    *,
    server_address: str = "",
    temperature: float | None = None,
    top_p: float | None = None,
    max_tokens: int | None = None,
) -> Iterator[ModelCall]:
    """A chat model call: the span `chat <model>` (GenAI conventions) and the duration and
    token metrics of the call, recorded as it ends (with `error.type` when it failed)."""
    attributes: dict[str, AttributeValue] = {
        "gen_ai.operation.name": "chat",
        "gen_ai.provider.name": "openai",
        "gen_ai.request.model": model,
    }
    span_attributes = dict(attributes)
    for key, value in (
        ("server.address", server_address),
        ("gen_ai.request.temperature", temperature),
        ("gen_ai.request.top_p", top_p),
        ("gen_ai.request.max_tokens", max_tokens),
    ):
        if value:
            span_attributes[key] = value
    started = time.perf_counter()
    with TRACER.start_as_current_span(
        f"chat {model}", kind=SpanKind.CLIENT, attributes=span_attributes
    ) as span:
        call = ModelCall(span, attributes)
        try:
            yield call
        except BaseException as exc:
            attributes["error.type"] = type(exc).__name__
            span.set_attribute("error.type", type(exc).__name__)
            raise
        finally:
            _model_duration.record(time.perf_counter() - started, attributes)
            for kind, count in (("input", call.input_tokens), ("output", call.output_tokens)):
                if count:
                    _model_tokens.record(count, {**attributes, "gen_ai.token.type": kind})


@contextmanager
def tool_execution(
    tool_name: str, call_id: str, *, tenant: str, mcp_server: str = ""
) -> Iterator[Span]:
    """A tool's execution: the span `execute_tool <tool>` (GenAI conventions; an MCP tool's
    carries `mcp.method.name` and the server). Count its outcome with `tool_outcome`."""
    attributes: dict[str, AttributeValue] = {
        "gen_ai.operation.name": "execute_tool",
        "gen_ai.tool.name": tool_name,
        "gen_ai.tool.call.id": call_id,
        TENANT: tenant,
    }
    if mcp_server:
        attributes["mcp.method.name"] = "tools/call"
        attributes["loomwork.mcp.server"] = mcp_server
    with TRACER.start_as_current_span(f"execute_tool {tool_name}", attributes=attributes) as span:
        yield span


def tool_outcome(span: Span, tool_name: str, tenant: str, outcome: str) -> None:
    """Count one tool call by outcome (ok, error, failed) and mark its span."""
    _tool_calls.add(1, {"tool": tool_name, "outcome": outcome, TENANT: tenant})
    if outcome != "ok":
        span.set_attribute("error.type", "tool_error" if outcome == "error" else "tool_failed")


@contextmanager
def operation(name: str, attributes: dict[str, AttributeValue]) -> Iterator[Span]:
    """A span of the domain's own (a retrieval, an embedding batch): `name`, `attributes`."""
    with TRACER.start_as_current_span(name, attributes=attributes) as span:
        yield span
