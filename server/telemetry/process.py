"""A process's telemetry as its parts need it: set up once per process (traces when the
OTEL variables ask for them, metrics always), and the interceptors of its Temporal client
and workers."""

from __future__ import annotations

from dataclasses import dataclass

from temporalio.client import Interceptor as ClientInterceptor
from temporalio.contrib.opentelemetry import TracingInterceptor
from temporalio.worker import Interceptor as WorkerInterceptor

from loomwork.config import Settings
from server.telemetry.metrics import install_metrics
from server.telemetry.runs import RunTelemetryInterceptor
from server.telemetry.temporal_metrics import TemporalMetrics, temporal_metrics
from server.telemetry.tracing import install_tracing


@dataclass(frozen=True)
class Telemetry:
    """What a process's parts need of its telemetry."""

    tracing: bool  # spans are exported: RPCs and Temporal calls are traced
    tenant_label: bool
    temporal: TemporalMetrics

    @classmethod
    def install(cls, settings: Settings) -> Telemetry:
        """Set up the process's telemetry (once per process; later calls find it set up)."""
        provider = install_tracing()
        install_metrics(tenant_label=settings.metrics_tenant_label)
        return cls(
            tracing=provider is not None,
            tenant_label=settings.metrics_tenant_label,
            temporal=temporal_metrics(),
        )

    def client_interceptors(self) -> list[ClientInterceptor]:
        """The Temporal client's: with tracing, the trace continues through workflow starts,
        signals, updates and queries, into workflows and activities (the client's workers
        take it too); a run that replays makes no span again."""
        return [TracingInterceptor()] if self.tracing else []

    def worker_interceptors(self) -> list[WorkerInterceptor]:
        """A worker's own (after the client's): run metrics and log lines, run context."""
        return [RunTelemetryInterceptor(tenant_label=self.tenant_label)]
