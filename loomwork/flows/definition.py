"""The workflow DSL: steps and their composition into a checked, versioned definition.

A definition is a chain of nodes (`.then`, `.branch`, `.parallel`, `.foreach`, `.dowhile`,
`.dountil`, `.sleep`, `.sleep_until`, `.map`); data flows from each node's output to the
next node's input as JSON objects. `commit()` checks the wiring once, at start-up: every
node's input must be satisfiable by what the node before it produces, with the same types.

Step functions run as activities; conditions, mappings and sleep-until functions run
inside the workflow and must be deterministic (no I/O, clocks or randomness).
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import timedelta

from pydantic import BaseModel

from loomwork.flows.description import WorkflowInfo, describe_node, structure_hash
from loomwork.flows.nodes import (
    STEP_ID,
    Branch,
    Condition,
    Foreach,
    InvalidDefinition,
    Loop,
    MapNode,
    Mapping,
    NestedWorkflow,
    Node,
    Parallel,
    Sleep,
    SleepUntil,
    WakeTime,
)
from loomwork.flows.wiring import check_ids, require_compatible, wire


class Workflow:
    """A workflow definition under construction; `commit()` checks it and fixes its version."""

    def __init__(
        self,
        id: str,
        *,
        input: type[BaseModel],
        output: type[BaseModel],
        description: str = "",
        version: str | None = None,
    ) -> None:
        self.id = id
        self.input_model = input
        self.output_model = output
        self.description = description
        self.explicit_version = version
        self.nodes: list[Node] = []
        self.version = ""
        self._committed = False

    # -- composition -----------------------------------------------------------------------

    def then(self, node: Node | Workflow) -> Workflow:
        """Run `node` next on the previous output (a nested workflow runs as one step)."""
        self._add(_as_node(node))
        return self

    def branch(
        self,
        id: str,
        branches: Sequence[tuple[Condition, Node | Workflow]],
        *,
        default: Node | Workflow | None = None,
        description: str = "",
    ) -> Workflow:
        """Run the first node whose condition holds on the previous output, else `default`;
        the next step gets what the taken node produced (fields common to every path)."""
        self._add(
            Branch(
                id=id,
                description=description,
                branches=[(cond, _as_node(node)) for cond, node in branches],
                default=_as_node(default) if default is not None else None,
            )
        )
        return self

    def parallel(
        self, id: str, nodes: Sequence[Node | Workflow], *, description: str = ""
    ) -> Workflow:
        """Run every node at once on the previous output; the next step gets
        `{child id: output}`."""
        self._add(Parallel(id=id, description=description, nodes=[_as_node(n) for n in nodes]))
        return self

    def foreach(
        self,
        id: str,
        body: Node | Workflow,
        *,
        over: str,
        concurrency: int = 1,
        description: str = "",
    ) -> Workflow:
        """Run `body` for each item of the previous output's list field `over`, at most
        `concurrency` at a time; the next step gets `{"results": [outputs in item order]}`."""
        self._add(
            Foreach(
                id=id,
                description=description,
                body=_as_node(body),
                over=over,
                concurrency=concurrency,
            )
        )
        return self

    def dowhile(
        self, id: str, body: Node | Workflow, condition: Condition, *, description: str = ""
    ) -> Workflow:
        """Run `body`, then again while `condition(output)` holds."""
        self._add(Loop(id=id, description=description, body=_as_node(body), condition=condition))
        return self

    def dountil(
        self, id: str, body: Node | Workflow, condition: Condition, *, description: str = ""
    ) -> Workflow:
        """Run `body`, then again until `condition(output)` holds."""
        self._add(
            Loop(
                id=id,
                description=description,
                body=_as_node(body),
                condition=condition,
                until=True,
            )
        )
        return self

    def sleep(self, id: str, duration: timedelta, *, description: str = "") -> Workflow:
        """Wait (a durable timer); the data passes through unchanged."""
        self._add(Sleep(id=id, description=description or f"sleep {duration}", duration=duration))
        return self

    def sleep_until(self, id: str, fn: WakeTime, *, description: str = "") -> Workflow:
        """Wait until the time `fn(previous output)` returns; the data passes through."""
        self._add(SleepUntil(id=id, description=description, fn=fn))
        return self

    def map(
        self, id: str, fn: Mapping, *, output: type[BaseModel], description: str = ""
    ) -> Workflow:
        """Reshape the previous output with a deterministic function returning `output`."""
        self._add(MapNode(id=id, description=description, fn=fn, output_model=output))
        return self

    def _add(self, node: Node) -> None:
        if self._committed:
            raise InvalidDefinition(f"workflow {self.id!r} is committed; it cannot change")
        self.nodes.append(node)

    # -- checking ----------------------------------------------------------------------------

    def commit(self) -> Workflow:
        """Check ids and schema wiring; fix the version. Idempotent."""
        if self._committed:
            return self
        if not STEP_ID.match(self.id):
            raise InvalidDefinition(
                f"workflow id {self.id!r} must be 1..64 of [A-Za-z0-9_-], starting with a letter"
            )
        if not self.nodes:
            raise InvalidDefinition(f"workflow {self.id!r} has no steps")
        check_ids(self.id, self.nodes)
        produced: type[BaseModel] = self.input_model
        for node in self.nodes:
            produced = wire(self.id, node, produced)
        require_compatible(self.id, "output", produced, self.output_model)
        self.version = self.explicit_version or structure_hash(self)
        self._committed = True
        return self

    @property
    def committed(self) -> bool:
        return self._committed

    def find(self, path_ids: Sequence[str]) -> Node:
        """The node at a chain of step ids (nested workflows descend by their step id)."""
        nodes = self.nodes
        found: Node | None = None
        for step_id in path_ids:
            found = _find(nodes, step_id)
            if found is None:
                raise KeyError(step_id)
            nodes = (
                found.workflow.nodes
                if isinstance(found, NestedWorkflow) and found.workflow
                else found.children()
            )
        if found is None:
            raise KeyError("")
        return found

    def describe(self) -> WorkflowInfo:
        """The definition as data: what ListWorkflows shows."""
        return WorkflowInfo(
            id=self.id,
            description=self.description,
            version=self.version,
            input_schema=self.input_model.model_json_schema(),
            output_schema=self.output_model.model_json_schema(),
            steps=[describe_node(node) for node in self.nodes],
        )


def _as_node(node: Node | Workflow) -> Node:
    if isinstance(node, Workflow):
        node.commit()
        return NestedWorkflow(
            id=node.id,
            description=node.description or f"workflow {node.id}",
            input_model=node.input_model,
            output_model=node.output_model,
            workflow=node,
        )
    return node


def _find(nodes: Sequence[Node], step_id: str) -> Node | None:
    for node in nodes:
        if node.id == step_id:
            return node
        inner = _find(node.children(), step_id)
        if inner is not None:
            return inner
    return None
