"""Registered workflow definitions, by id and version.

Several versions of one id may be registered at once: new runs take the newest, runs in
flight keep the version they started with. Remove an old version only once its runs have
finished (README: "Changing a workflow under runs in flight").
"""

from __future__ import annotations

import importlib
from collections.abc import Mapping

from pydantic import BaseModel

from loomwork.errors import FailedPrecondition, NotFound
from loomwork.flows.definition import Workflow
from loomwork.flows.nodes import AgentStep, InvalidDefinition, Node, ToolStep


class WorkflowRegistry:
    def __init__(self) -> None:
        self._versions: dict[str, dict[str, Workflow]] = {}
        self._latest: dict[str, str] = {}

    def register(self, *workflows: Workflow) -> None:
        """Commit and add definitions; the last one registered for an id is its newest."""
        for workflow in workflows:
            workflow.commit()
            versions = self._versions.setdefault(workflow.id, {})
            existing = versions.get(workflow.version)
            if existing is not None and existing is not workflow:
                raise InvalidDefinition(
                    f"workflow {workflow.id!r} version {workflow.version!r} is registered twice "
                    "with different definitions"
                )
            versions[workflow.version] = workflow
            self._latest[workflow.id] = workflow.version

    def contains(self, workflow_id: str, version: str) -> bool:
        return version in self._versions.get(workflow_id, {})

    def latest(self, workflow_id: str) -> Workflow:
        version = self._latest.get(workflow_id)
        if version is None:
            raise NotFound(f"workflow {workflow_id!r} is not registered")
        return self._versions[workflow_id][version]

    def get(self, workflow_id: str, version: str) -> Workflow:
        """The exact version a run started with."""
        versions = self._versions.get(workflow_id)
        if not versions:
            raise NotFound(f"workflow {workflow_id!r} is not registered")
        workflow = versions.get(version)
        if workflow is None:
            raise FailedPrecondition(
                f"workflow {workflow_id!r} version {version!r} is no longer registered; "
                f"registered: {', '.join(sorted(versions))}. Keep a version registered until "
                "its runs have finished."
            )
        return workflow

    def newest(self) -> list[Workflow]:
        """The newest version of every workflow, ordered by id."""
        return [self._versions[i][self._latest[i]] for i in sorted(self._latest)]

    def check_references(self, tools: Mapping[str, type[BaseModel]], agents: set[str]) -> None:
        """Start-up check: every tool (with the same argument model) and agent a definition
        names exists."""
        for versions in self._versions.values():
            for workflow in versions.values():
                _check_nodes(workflow, workflow.nodes, tools, agents)


def _check_nodes(
    workflow: Workflow, nodes: list[Node], tools: Mapping[str, type[BaseModel]], agents: set[str]
) -> None:
    for node in nodes:
        if isinstance(node, ToolStep):
            args = tools.get(node.tool_name)
            if args is None:
                raise InvalidDefinition(
                    f"workflow {workflow.id!r} step {node.id!r}: tool {node.tool_name!r} is not "
                    "registered"
                )
            if node.input_model is not args:
                raise InvalidDefinition(
                    f"workflow {workflow.id!r} step {node.id!r}: tool {node.tool_name!r} takes "
                    f"{args.__name__}, the step declares {node.input_model!r}"
                )
        if isinstance(node, AgentStep) and node.agent_name not in agents:
            raise InvalidDefinition(
                f"workflow {workflow.id!r} step {node.id!r}: agent {node.agent_name!r} is not "
                "defined"
            )
        _check_nodes(workflow, node.children(), tools, agents)
        inner = getattr(node, "workflow", None)
        if isinstance(inner, Workflow):
            _check_nodes(inner, inner.nodes, tools, agents)


def import_workflow_modules(names: str) -> list[str]:
    """Import the comma-separated modules (LOOMWORK_WORKFLOW_MODULES) that register the
    application's workflows on `default_registry`; return the ones imported."""
    imported = []
    for name in (n.strip() for n in names.split(",")):
        if not name:
            continue
        try:
            importlib.import_module(name)
        except ImportError as exc:
            raise InvalidDefinition(
                f"LOOMWORK_WORKFLOW_MODULES names {name!r}, which cannot be imported: {exc}"
            ) from exc
        imported.append(name)
    return imported


# The worker's workflow code reaches definitions through this one registry (the module is
# passed through Temporal's sandbox, so worker and workflow see the same object).
default_registry = WorkflowRegistry()
