"""How the agent workflow runs one tool call, decided by the model step that asked for it."""

from __future__ import annotations

from datetime import timedelta
from typing import Literal

from pydantic import BaseModel

from loomwork.retries import RetryPolicy
from loomwork.tools.mcp_names import McpToolRef

# What runs a call: a tool of the worker's own registry, a tool of an MCP server, the
# calling service (a client tool, answered by SubmitToolResults), another agent (a sub-agent
# run: `agent:<name>`), or none: a handoff of the run to another agent.
ToolKind = Literal["worker", "mcp", "client", "agent", "handoff"]

DEFAULT_TOOL_TIMEOUT = timedelta(minutes=2)
# The longest a run waits for a decision on one call, when a limit is declared.
MAX_APPROVAL_TIMEOUT = timedelta(days=30)


def earliest(*limits: timedelta | None) -> timedelta | None:
    """The shortest of the limits that are set (None when none is)."""
    return min((limit for limit in limits if limit is not None), default=None)


class ToolRoute(BaseModel):
    """Where a tool call runs and with which limits. A step recorded before routes existed
    carries none: its calls run as worker tools with the defaults."""

    kind: ToolKind = "worker"
    summary: str = ""  # the activity's summary in the Temporal UI; "" = "tool <name>"
    # One attempt's limit; for a client tool, how long the run waits for the caller's result
    # (None: until it comes, for client tools only).
    timeout: timedelta | None = DEFAULT_TOOL_TIMEOUT
    retry: RetryPolicy | None = None  # None: the agent workflow's default for tools
    mcp: McpToolRef | None = None  # kind "mcp": the server and tool the call goes to
    agent: str = ""  # kinds "agent" and "handoff": the agent called, or handed the run
    # Kind "agent": the sub-run's id, when the step began its first step (else the workflow
    # names it).
    run_id: str = ""
    # A call that needs approval: how long the run waits for the decision before it rejects
    # the call (the earliest of the tool's and the agent's limits; None: until one comes).
    approval_timeout: timedelta | None = None
