"""The Temporal SDK's own metrics (workflow and activity task latencies, polls, slots,
completions...; `temporal_*` at /metrics), from the process's Temporal runtime: its metric
buffer is drained into the meter provider (`temporalio.contrib.opentelemetry`)."""

from __future__ import annotations

import asyncio
from datetime import timedelta

from opentelemetry import metrics
from temporalio.contrib.opentelemetry import MetricsExporter
from temporalio.runtime import (
    MetricBuffer,
    MetricBufferDurationFormat,
    Runtime,
    TelemetryConfig,
)

# Updates the buffer holds between two drains (one a second); the SDK drops past it.
BUFFER_SIZE = 20_000


class TemporalMetrics:
    """The Temporal runtime of the process's clients and workers, and the drain of its
    metrics, running while some `Runtime` of the process is open."""

    def __init__(self) -> None:
        self.buffer = MetricBuffer(BUFFER_SIZE, MetricBufferDurationFormat.SECONDS)
        self.runtime = Runtime(
            telemetry=TelemetryConfig(metrics=self.buffer, attach_service_name=False)
        )
        self._users = 0
        self._exporter: MetricsExporter | None = None
        self._task: asyncio.Task[None] | None = None

    def acquire(self) -> None:
        """One more user: the drain runs (on the running loop) from the first on."""
        self._users += 1
        if self._task is None or self._task.done():
            self._exporter = MetricsExporter(
                self.buffer, metrics.get_meter_provider(), poll_interval=timedelta(seconds=1)
            )
            self._task = asyncio.create_task(self._exporter.run(), name="temporal-metrics")

    async def release(self) -> None:
        """One user less: the last one stops the drain (after a final one)."""
        self._users -= 1
        if self._users == 0 and self._exporter is not None and self._task is not None:
            if not self._task.done():
                await self._exporter.shutdown()
            self._task = None


_temporal_metrics: TemporalMetrics | None = None


def temporal_metrics() -> TemporalMetrics:
    """The process's one Temporal runtime with its metrics (made on first use)."""
    global _temporal_metrics
    if _temporal_metrics is None:
        _temporal_metrics = TemporalMetrics()
    return _temporal_metrics
