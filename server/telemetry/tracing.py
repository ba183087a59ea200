"""Traces: the OpenTelemetry SDK exporting spans over OTLP, set up from the standard
variables, and only when they ask for it.

`OTEL_EXPORTER_OTLP_ENDPOINT` (or `OTEL_EXPORTER_OTLP_TRACES_ENDPOINT`) turns tracing on;
`OTEL_EXPORTER_OTLP_PROTOCOL` (or `..._TRACES_PROTOCOL`) picks `grpc` or `http/protobuf`
(the default, as the specification says); `OTEL_SERVICE_NAME`, `OTEL_RESOURCE_ATTRIBUTES`,
`OTEL_TRACES_SAMPLER`, `OTEL_EXPORTER_OTLP_HEADERS`, `OTEL_BSP_*`... are read by the SDK
itself. Unset (or `OTEL_SDK_DISABLED=true`, `OTEL_TRACES_EXPORTER=none`): no SDK, no
exporter; spans of the API stay non-recording and nothing is intercepted for them.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping

from opentelemetry import trace
from opentelemetry.sdk.resources import SERVICE_NAME, Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor, SpanExporter

from loomwork.errors import FailedPrecondition

log = logging.getLogger(__name__)

PROTOCOLS = ("grpc", "http/protobuf")
DEFAULT_SERVICE_NAME = "loomwork"

_provider: TracerProvider | None = None


def tracing_requested(environ: Mapping[str, str]) -> bool:
    """Whether the environment asks for traces: an OTLP endpoint, and the SDK not disabled."""
    if environ.get("OTEL_SDK_DISABLED", "").strip().lower() == "true":
        return False
    if environ.get("OTEL_TRACES_EXPORTER", "otlp").strip().lower() == "none":
        return False
    return bool(
        environ.get("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT")
        or environ.get("OTEL_EXPORTER_OTLP_ENDPOINT")
    )


def otlp_protocol(environ: Mapping[str, str]) -> str:
    """The OTLP protocol the environment names (traces' own variable first)."""
    protocol = (
        environ.get("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL")
        or environ.get("OTEL_EXPORTER_OTLP_PROTOCOL")
        or "http/protobuf"
    ).strip()
    if protocol not in PROTOCOLS:
        raise FailedPrecondition(
            f"OTEL_EXPORTER_OTLP_PROTOCOL {protocol!r}: expected one of {', '.join(PROTOCOLS)}"
        )
    return protocol


def span_exporter(protocol: str) -> SpanExporter:
    """The OTLP span exporter of `protocol`; endpoint, headers, timeout, compression and
    certificates come from the OTEL_EXPORTER_OTLP_* variables."""
    if protocol == "grpc":
        from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter
    else:
        from opentelemetry.exporter.otlp.proto.http.trace_exporter import (  # type: ignore[assignment]
            OTLPSpanExporter,
        )
    return OTLPSpanExporter()


def service_resource() -> Resource:
    """The process as the SDK describes it (OTEL_SERVICE_NAME, OTEL_RESOURCE_ATTRIBUTES),
    named `loomwork` unless they name it."""
    resource = Resource.create()
    if str(resource.attributes.get(SERVICE_NAME, "")).startswith("unknown_service"):
        resource = resource.merge(Resource({SERVICE_NAME: DEFAULT_SERVICE_NAME}))
    return resource


def install_tracing(environ: Mapping[str, str] = os.environ) -> TracerProvider | None:
    """The process's tracer provider, set up (once: the global provider cannot change) when
    the environment asks for traces; None when it does not."""
    global _provider
    if _provider is None and tracing_requested(environ):
        protocol = otlp_protocol(environ)
        provider = TracerProvider(resource=service_resource())
        provider.add_span_processor(BatchSpanProcessor(span_exporter(protocol)))
        trace.set_tracer_provider(provider)
        _provider = provider
        log.info("tracing: exporting spans over OTLP (%s)", protocol)
    return _provider


def flush_spans(timeout_millis: int = 5000) -> None:
    """Export the spans ended so far (a process about to stop)."""
    if _provider is not None:
        _provider.force_flush(timeout_millis)
