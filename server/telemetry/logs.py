"""Logs: JSON lines when stderr is not a terminal (or LOOMWORK_LOG_FORMAT=json), the rich
console otherwise; every line logged inside a run carries its tenant, run id, workflow id
and trace id (`RunContext`, set for each activity and each run's workflow code), a line of
an RPC its tenant and trace id."""

from __future__ import annotations

import json
import logging
import sys
from collections.abc import Callable
from contextvars import ContextVar
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from opentelemetry import trace
from rich.console import Console
from rich.logging import RichHandler

# Libraries that say too much at INFO.
QUIET = ("temporalio", "httpx2", "openai", "uvicorn", "uvicorn.access", "psycopg.pool")
# The run's context on a record, set by the filter (or passed in a record's `extra`).
CONTEXT_FIELDS = ("tenant", "run_id", "workflow_id", "trace_id", "span_id")
# What every LogRecord has: anything else on a record came in its `extra`.
_RECORD_FIELDS = set(logging.LogRecord("", 0, "", 0, "", None, None).__dict__) | {
    "message",
    "asctime",
    *CONTEXT_FIELDS,
}


@dataclass(frozen=True)
class RunContext:
    """The run a piece of code works for."""

    tenant: str
    run_id: str
    workflow_id: str


RUN_CONTEXT: ContextVar[RunContext | None] = ContextVar("loomwork_run_context", default=None)

# Workflow ids of runs: <kind>/<name>/<tenant>/<run> (agent, wf, rag, rag-answer); a webhook
# delivery: webhook/<tenant>/<source>/<delivery>.
_RUN_PREFIXES = ("agent", "wf", "rag", "rag-answer")


def run_context(workflow_id: str) -> RunContext | None:
    """The run context a workflow id names, or None for a workflow that is no run."""
    parts = workflow_id.split("/")
    if len(parts) == 4 and parts[0] in _RUN_PREFIXES:
        return RunContext(tenant=parts[2], run_id=parts[3], workflow_id=workflow_id)
    if len(parts) == 4 and parts[0] == "webhook":
        return RunContext(tenant=parts[1], run_id=parts[3], workflow_id=workflow_id)
    return None


class RunContextFilter(logging.Filter):
    """Puts the run context (else the tenant `rpc_tenant` answers: the RPC's) and the current
    trace on each record, unless the record names them itself."""

    def __init__(self, rpc_tenant: Callable[[], str] = lambda: "") -> None:
        super().__init__()
        self.rpc_tenant = rpc_tenant

    def filter(self, record: logging.LogRecord) -> bool:
        context = RUN_CONTEXT.get()
        values = {
            "tenant": context.tenant if context else self.rpc_tenant(),
            "run_id": context.run_id if context else "",
            "workflow_id": context.workflow_id if context else "",
            "trace_id": "",
            "span_id": "",
        }
        span = trace.get_current_span().get_span_context()
        if span.is_valid:
            values["trace_id"] = format(span.trace_id, "032x")
            values["span_id"] = format(span.span_id, "016x")
        for name, value in values.items():
            if not getattr(record, name, ""):
                setattr(record, name, value)
        return True


class JsonFormatter(logging.Formatter):
    """One JSON object a line: time, level, logger, message, the run context fields that
    are set, anything passed in `extra`, and the exception if any."""

    def format(self, record: logging.LogRecord) -> str:
        line: dict[str, Any] = {
            "time": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
        }
        for name in CONTEXT_FIELDS:
            value = getattr(record, name, "")
            if value:
                line[name] = value
        for name, value in record.__dict__.items():
            if name not in _RECORD_FIELDS and not name.startswith("_"):
                line[name] = value
        if record.exc_info:
            line["exception"] = self.formatException(record.exc_info)
        return json.dumps(line, default=str, ensure_ascii=False)


def json_logs(log_format: str) -> bool:
    """Whether lines go out as JSON: asked for, or "auto" and stderr is no terminal."""
    if log_format == "auto":
        return not sys.stderr.isatty()
    return log_format == "json"


def configure_logging(
    *,
    verbose: bool,
    log_format: str,
    console: Console,
    rpc_tenant: Callable[[], str] = lambda: "",
) -> None:
    """The process's root logging: JSON lines or the rich `console`, with run context (and
    the tenant `rpc_tenant` answers, outside runs)."""
    if json_logs(log_format):
        handler: logging.Handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(JsonFormatter())
    else:
        handler = RichHandler(console=console, show_path=False, rich_tracebacks=False)
        handler.setFormatter(logging.Formatter("%(name)s: %(message)s"))
    handler.addFilter(RunContextFilter(rpc_tenant))
    logging.basicConfig(
        level=logging.DEBUG if verbose else logging.INFO, handlers=[handler], force=True
    )
    for noisy in QUIET:
        logging.getLogger(noisy).setLevel(logging.WARNING)
