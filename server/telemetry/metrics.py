"""Metrics: one OpenTelemetry meter provider per process, read by Prometheus at `/metrics`
on the HTTP endpoint (text format, through `prometheus_client`'s default registry, which
carries the process's own metrics too).

What is measured is named where it is measured (the domain's in `loomwork.telemetry`, RPCs
in `server.transport.rpc_telemetry`, runs in `server.telemetry.runs`, the Temporal SDK's own
in `server.telemetry.temporal_metrics`); here they are exposed, with the tenant label kept
only when LOOMWORK_METRICS_TENANT_LABEL asks for it.
"""

from __future__ import annotations

from opentelemetry import metrics
from opentelemetry.exporter.prometheus import PrometheusMetricReader
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.view import View
from prometheus_client import CONTENT_TYPE_LATEST, REGISTRY, generate_latest

from loomwork.telemetry import TENANT
from server.telemetry.tracing import service_resource

# The instruments of the domain that carry the tenant, with their other attributes: without
# the tenant label a view keeps only these.
TENANT_LABELLED = {"loomwork.tool.calls": {"tool", "outcome"}}

_provider: MeterProvider | None = None


def install_metrics(*, tenant_label: bool) -> MeterProvider:
    """The process's meter provider, read at /metrics (set up once per process: the first
    call's `tenant_label` holds for the process)."""
    global _provider
    if _provider is None:
        views = (
            []
            if tenant_label
            else [
                View(instrument_name=name, attribute_keys=keys - {TENANT})
                for name, keys in TENANT_LABELLED.items()
            ]
        )
        reader = PrometheusMetricReader(scope_info_enabled=False)
        _provider = MeterProvider(metric_readers=[reader], resource=service_resource(), views=views)
        metrics.set_meter_provider(_provider)
    return _provider


def prometheus_text() -> tuple[bytes, str]:
    """Every metric of the process in the Prometheus text format, and its content type."""
    return generate_latest(REGISTRY), CONTENT_TYPE_LATEST
