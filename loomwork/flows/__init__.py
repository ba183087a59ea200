"""User workflows: a step-graph DSL, checked at registration, run by one generic workflow."""

from loomwork.flows.definition import Workflow
from loomwork.flows.nodes import (
    AgentStepInput,
    AgentStepOutput,
    InvalidDefinition,
    ToolStepOutput,
    agent_step,
    step,
    tool_step,
)
from loomwork.flows.registry import WorkflowRegistry, default_registry
from loomwork.flows.step_context import StepContext, StepSuspended
from loomwork.retries import RetryPolicy

__all__ = [
    "AgentStepInput",
    "AgentStepOutput",
    "InvalidDefinition",
    "RetryPolicy",
    "StepContext",
    "StepSuspended",
    "ToolStepOutput",
    "Workflow",
    "WorkflowRegistry",
    "agent_step",
    "default_registry",
    "step",
    "tool_step",
]
