"""A definition as data (what ListWorkflows shows) and the version derived from it."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable
from datetime import timedelta
from typing import Any

from pydantic import BaseModel, Field

from loomwork.flows.nodes import (
    AgentStep,
    Branch,
    Definition,
    Foreach,
    Loop,
    MapNode,
    NestedWorkflow,
    Node,
    Sleep,
    SleepUntil,
    Step,
    StepKind,
    ToolStep,
)
from loomwork.retries import RetryPolicy


class StepInfo(BaseModel):
    """One step of a definition, as data."""

    id: str
    description: str
    kind: StepKind
    input_schema: dict[str, Any] | None = None
    output_schema: dict[str, Any] | None = None
    suspend_schema: dict[str, Any] | None = None
    resume_schema: dict[str, Any] | None = None
    retry: RetryPolicy | None = None
    children: list[StepInfo] = Field(default_factory=list)
    condition: str = ""
    default_branch: bool = False
    workflow_id: str = ""
    agent_name: str = ""
    tool_name: str = ""
    concurrency: int = 0
    sleep_duration: timedelta | None = None
    suspend_timeout: timedelta | None = None
    resume_on_timeout: dict[str, Any] | None = None


# Fields added after definitions were first versioned: left out of the version while unset,
# so a definition that does not use them keeps the version it had.
_VERSIONED_WHEN_SET = ("suspend_timeout", "resume_on_timeout")


class WorkflowInfo(BaseModel):
    """A committed definition, as data."""

    id: str
    description: str
    version: str
    input_schema: dict[str, Any]
    output_schema: dict[str, Any]
    steps: list[StepInfo]


def _callable_name(fn: Callable[..., Any] | None) -> str:
    if fn is None:
        return ""
    return getattr(fn, "__qualname__", None) or getattr(fn, "__name__", "") or repr(fn)


def describe_node(node: Node) -> StepInfo:
    info = StepInfo(
        id=node.id,
        description=node.description,
        kind=node.kind,
        input_schema=node.input_model.model_json_schema() if node.input_model else None,
        output_schema=node.output_model.model_json_schema() if node.output_model else None,
    )
    if isinstance(node, Step):
        info.retry = node.retry
        if node.suspend_model and node.resume_model:
            info.suspend_schema = node.suspend_model.model_json_schema()
            info.resume_schema = node.resume_model.model_json_schema()
        info.suspend_timeout = node.suspend_timeout
        if node.resume_on_timeout is not None:
            info.resume_on_timeout = node.resume_on_timeout.model_dump(mode="json")
    elif isinstance(node, ToolStep):
        info.tool_name = node.tool_name
        info.retry = node.retry
    elif isinstance(node, AgentStep):
        info.agent_name = node.agent_name
    elif isinstance(node, NestedWorkflow) and node.workflow:
        info.workflow_id = node.workflow.id
        info.children = [describe_node(child) for child in node.workflow.nodes]
        return info
    elif isinstance(node, Sleep):
        info.sleep_duration = node.duration
    elif isinstance(node, SleepUntil):
        info.condition = _callable_name(node.fn)
    elif isinstance(node, Branch):
        for condition, child in node.branches:
            child_info = describe_node(child)
            child_info.condition = _callable_name(condition)
            info.children.append(child_info)
        if node.default is not None:
            child_info = describe_node(node.default)
            child_info.default_branch = True
            info.children.append(child_info)
        return info
    elif isinstance(node, Foreach):
        info.concurrency = node.concurrency
    elif isinstance(node, Loop):
        info.condition = _callable_name(node.condition)
    elif isinstance(node, MapNode):
        info.condition = _callable_name(node.fn)
    info.children = [describe_node(child) for child in node.children()]
    return info


def structure_hash(workflow: Definition) -> str:
    """A version that changes whenever the step graph, a schema or a condition changes."""
    shape = {
        "input": workflow.input_model.model_json_schema(),
        "output": workflow.output_model.model_json_schema(),
        "steps": [
            _versioned(describe_node(node).model_dump(mode="json")) for node in workflow.nodes
        ],
        "code": [_code_of(node) for node in workflow.nodes],
    }
    digest = hashlib.sha256(json.dumps(shape, sort_keys=True, default=str).encode())
    return digest.hexdigest()[:12]


def _versioned(step: dict[str, Any]) -> dict[str, Any]:
    """A described step as its version sees it (see _VERSIONED_WHEN_SET)."""
    shown = {k: v for k, v in step.items() if k not in _VERSIONED_WHEN_SET or v is not None}
    shown["children"] = [_versioned(child) for child in step["children"]]
    return shown


def _code_of(node: Node) -> list[str]:
    """Bytecode of the functions that run inside the workflow (conditions, maps)."""
    functions: list[Callable[..., Any] | None] = []
    if isinstance(node, MapNode | SleepUntil):
        functions.append(node.fn)
    elif isinstance(node, Loop):
        functions.append(node.condition)
    elif isinstance(node, Branch):
        functions.extend(cond for cond, _ in node.branches)
    codes = []
    for fn in functions:
        code = getattr(fn, "__code__", None)
        codes.append(hashlib.sha256(code.co_code).hexdigest()[:12] if code else "")
    for child in node.children():
        codes.extend(_code_of(child))
    if isinstance(node, NestedWorkflow) and node.workflow:
        codes.append(node.workflow.version)
    return codes
