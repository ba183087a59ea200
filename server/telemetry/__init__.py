"""Observability of a Loomwork process: traces (OTLP), metrics (/metrics) and logs, set up
once per process from the environment; the domain reports through the OpenTelemetry API
alone (`loomwork.telemetry`)."""
