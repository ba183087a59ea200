"""How a process sets up its telemetry from the standard OTEL variables: unset, nothing is
exported and nothing is intercepted for traces; the protocol variable picks the exporter."""

from __future__ import annotations

import pytest
from opentelemetry import trace
from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter as GrpcExporter
from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter as HttpExporter
from opentelemetry.sdk.trace import TracerProvider

from loomwork.errors import FailedPrecondition
from server.runtime import Runtime
from server.telemetry.tracing import otlp_protocol, span_exporter, tracing_requested

ENDPOINT = {"OTEL_EXPORTER_OTLP_ENDPOINT": "http://127.0.0.1:4317"}


def test_tracing_is_on_only_with_an_endpoint_and_the_sdk_enabled() -> None:
    assert not tracing_requested({})
    assert tracing_requested(ENDPOINT)
    assert tracing_requested({"OTEL_EXPORTER_OTLP_TRACES_ENDPOINT": "http://x:4318/v1/traces"})
    assert not tracing_requested({**ENDPOINT, "OTEL_SDK_DISABLED": "true"})
    assert not tracing_requested({**ENDPOINT, "OTEL_TRACES_EXPORTER": "none"})


def test_the_protocol_variable_picks_the_exporter() -> None:
    assert otlp_protocol({}) == "http/protobuf"  # the specification's default
    assert otlp_protocol({"OTEL_EXPORTER_OTLP_PROTOCOL": "grpc"}) == "grpc"
    traces_own = {
        "OTEL_EXPORTER_OTLP_PROTOCOL": "grpc",
        "OTEL_EXPORTER_OTLP_TRACES_PROTOCOL": "http/protobuf",
    }
    assert otlp_protocol(traces_own) == "http/protobuf"
    assert isinstance(span_exporter("grpc"), GrpcExporter)
    assert isinstance(span_exporter("http/protobuf"), HttpExporter)
    with pytest.raises(FailedPrecondition, match="http/json"):
        otlp_protocol({"OTEL_EXPORTER_OTLP_PROTOCOL": "http/json"})


def test_unset_nothing_is_exported_or_intercepted_for_traces(runtime: Runtime) -> None:
    # The test session sets no OTEL variable: no SDK provider, no tracing interceptor.
    assert runtime.telemetry is not None and not runtime.telemetry.tracing
    assert not isinstance(trace.get_tracer_provider(), TracerProvider)
    assert runtime.telemetry.client_interceptors() == []
    assert runtime.temporal.config()["interceptors"] == []
