"""The checks `Workflow.commit` runs once: step ids, and that every node accepts what the
node before it produces (same field names, same types)."""

from __future__ import annotations

import re
from collections.abc import Sequence
from datetime import timedelta
from typing import Any

from pydantic import BaseModel, create_model

from loomwork.flows.nodes import (
    STEP_ID,
    Branch,
    Foreach,
    InvalidDefinition,
    Loop,
    MapNode,
    NestedWorkflow,
    Node,
    Parallel,
    Sleep,
    SleepUntil,
    Step,
    ToolStep,
)


def check_ids(workflow_id: str, nodes: Sequence[Node]) -> None:
    seen: set[str] = set()

    def visit(node: Node) -> None:
        if not STEP_ID.match(node.id):
            raise InvalidDefinition(
                f"workflow {workflow_id!r}: step id {node.id!r} must be 1..64 of [A-Za-z0-9_-], "
                "starting with a letter"
            )
        if node.id in seen:
            raise InvalidDefinition(f"workflow {workflow_id!r}: step id {node.id!r} is used twice")
        seen.add(node.id)
        for child in node.children():
            visit(child)

    for node in nodes:
        visit(node)


def wire(workflow_id: str, node: Node, produced: type[BaseModel]) -> type[BaseModel]:
    """Check that `node` accepts `produced`; set its models; return what it produces."""
    where = f"{workflow_id}.{node.id}"
    if isinstance(node, Step):
        if node.fn is None or node.input_model is None or node.output_model is None:
            raise InvalidDefinition(f"{where}: a step needs a function, input and output")
        if node.retry.timeout <= timedelta(0):
            raise InvalidDefinition(f"{where}: retry timeout must be positive")
    elif isinstance(node, ToolStep):
        if not node.tool_name or node.input_model is None:
            raise InvalidDefinition(f"{where}: a tool step needs a tool name and its args model")
    elif isinstance(node, NestedWorkflow):
        assert node.workflow is not None
        node.workflow.commit()
    elif isinstance(node, MapNode):
        if node.fn is None or node.output_model is None:
            raise InvalidDefinition(f"{where}: map needs a function and an output model")
        node.input_model = produced
        return node.output_model
    elif isinstance(node, Sleep):
        if node.duration < timedelta(0):
            raise InvalidDefinition(f"{where}: sleep duration must not be negative")
        node.input_model = node.output_model = produced
        return produced
    elif isinstance(node, SleepUntil):
        if node.fn is None:
            raise InvalidDefinition(f"{where}: sleep_until needs a function")
        node.input_model = node.output_model = produced
        return produced
    elif isinstance(node, Branch):
        if not node.branches:
            raise InvalidDefinition(f"{where}: a branch needs at least one condition")
        outputs = [wire(workflow_id, child, produced) for child in node.children()]
        node.input_model = produced
        node.output_model = _common_fields(f"{node.id.title()}Output", outputs)
        return node.output_model
    elif isinstance(node, Parallel):
        if not node.nodes:
            raise InvalidDefinition(f"{where}: parallel needs at least one step")
        fields: dict[str, Any] = {
            child.id: (wire(workflow_id, child, produced), ...) for child in node.nodes
        }
        node.input_model = produced
        node.output_model = create_model(f"{_camel(node.id)}Output", **fields)
        return node.output_model
    elif isinstance(node, Foreach):
        assert node.body is not None
        if node.concurrency < 1:
            raise InvalidDefinition(f"{where}: concurrency must be >= 1")
        over = produced.model_fields.get(node.over)
        if over is None:
            raise InvalidDefinition(
                f"{where}: foreach over {node.over!r}, which {produced.__name__} does not have"
            )
        item = _list_item(over.annotation)
        if item is None:
            raise InvalidDefinition(f"{where}: foreach over {node.over!r}, which is not a list")
        body_output = wire(workflow_id, node.body, item)
        node.input_model = produced
        node.output_model = create_model(
            f"{_camel(node.id)}Output",
            results=(list[body_output], ...),  # type: ignore[valid-type]
        )
        return node.output_model
    elif isinstance(node, Loop):
        assert node.body is not None
        if node.condition is None:
            raise InvalidDefinition(f"{where}: a loop needs a condition")
        body_output = wire(workflow_id, node.body, produced)
        assert node.body.input_model is not None
        require_compatible(
            workflow_id, f"{node.id} (output fed back)", body_output, node.body.input_model
        )
        node.input_model = produced
        node.output_model = body_output
        return body_output
    assert node.input_model is not None and node.output_model is not None
    require_compatible(workflow_id, node.id, produced, node.input_model)
    return node.output_model


def require_compatible(
    workflow_id: str, consumer: str, produced: type[BaseModel], consumed: type[BaseModel]
) -> None:
    if produced is consumed or issubclass(produced, consumed):
        return
    problems = []
    for name, wanted in consumed.model_fields.items():
        have = produced.model_fields.get(name)
        if have is None:
            if wanted.is_required():
                problems.append(f"needs {name!r}, which {produced.__name__} does not have")
        elif have.annotation != wanted.annotation:
            problems.append(
                f"needs {name!r} as {_type_name(wanted.annotation)}, "
                f"{produced.__name__} has {_type_name(have.annotation)}"
            )
    if problems:
        raise InvalidDefinition(
            f"workflow {workflow_id!r}: {consumer} ({consumed.__name__}) cannot take "
            f"{produced.__name__}: " + "; ".join(problems)
        )


def _common_fields(name: str, models: list[type[BaseModel]]) -> type[BaseModel]:
    """What every path of a branch produces: fields present in all, with the same type."""
    if all(m is models[0] for m in models):
        return models[0]
    fields: dict[str, Any] = {}
    for field_name, info in models[0].model_fields.items():
        others = [m.model_fields.get(field_name) for m in models[1:]]
        if all(o is not None and o.annotation == info.annotation for o in others):
            required = info.is_required() and all(o is not None and o.is_required() for o in others)
            fields[field_name] = (info.annotation, ... if required else None)
    return create_model(name, **fields)


def _list_item(annotation: Any) -> type[BaseModel] | None:
    args = getattr(annotation, "__args__", None)
    if getattr(annotation, "__origin__", None) is list and args:
        item = args[0]
        if isinstance(item, type) and issubclass(item, BaseModel):
            return item
    return None


def _type_name(annotation: Any) -> str:
    return getattr(annotation, "__name__", None) or str(annotation)


def _camel(step_id: str) -> str:
    return "".join(part.capitalize() for part in re.split(r"[_-]", step_id))
