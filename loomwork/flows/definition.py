"""The workflow DSL: steps and their composition into a checked, versioned definition.

A definition is a chain of nodes (`.then`, `.branch`, `.parallel`, `.foreach`, `.dowhile`,
`.dountil`, `.sleep`, `.sleep_until`, `.map`); data flows from each node's output to the
next node's input as JSON objects. `commit()` checks the wiring once, at start-up: every
node's input must be satisfiable by what the node before it produces, with the same types.

Step functions run as activities; conditions, mappings and sleep-until functions run
inside the workflow and must be deterministic (no I/O, clocks or randomness).
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, create_model

from loomwork.flows.step_context import StepContext

StepKind = Literal[
    "step",
    "agent",
    "tool",
    "workflow",
    "map",
    "sleep",
    "sleep_until",
    "branch",
    "parallel",
    "foreach",
    "do_while",
    "do_until",
]

_ID = re.compile(r"^[A-Za-z][A-Za-z0-9_-]{0,63}$")

StepFunction = Callable[[Any, StepContext], Awaitable[BaseModel]]
Condition = Callable[[Any], bool]
Mapping = Callable[[Any], BaseModel]
WakeTime = Callable[[Any], datetime]


class InvalidDefinition(ValueError):
    """A workflow definition that cannot run: raised when it is committed or registered."""


class RetryPolicy(BaseModel):
    """How a step's activity is retried (a Temporal retry policy)."""

    model_config = ConfigDict(frozen=True)

    max_attempts: int = Field(default=3, ge=0, description="0 means unlimited (until timeout)")
    initial_interval: timedelta = timedelta(seconds=1)
    backoff_coefficient: float = Field(default=2.0, ge=1.0)
    maximum_interval: timedelta = timedelta(seconds=30)
    non_retryable_error_types: tuple[str, ...] = ()
    timeout: timedelta = Field(default=timedelta(minutes=5), description="one attempt's limit")


class AgentStepInput(BaseModel):
    """What an agent step receives: the prompt, and where its conversation lives."""

    prompt: str
    thread_id: str = ""
    resource_id: str = ""


class AgentStepOutput(BaseModel):
    """What an agent step produces: the agent's final text and its run."""

    text: str
    run_id: str
    thread_id: str


class ToolStepOutput(BaseModel):
    """What a tool step produces: the tool's result."""

    result: Any = None


@dataclass(eq=False)
class Node:
    """One node of a definition. `input_model` / `output_model` are known after commit."""

    id: str
    description: str = ""
    input_model: type[BaseModel] | None = None
    output_model: type[BaseModel] | None = None

    kind: StepKind = field(init=False, default="step")

    def children(self) -> list[Node]:
        return []


@dataclass(eq=False)
class Step(Node):
    """A Python step function, run as an activity with its own retry policy.

    The function gets the validated input model and a `StepContext`; it may call
    `ctx.suspend(payload)` (validated by `suspend`) and is then run again with
    `ctx.resume_data` (validated by `resume`) once the run is resumed."""

    fn: StepFunction | None = None
    suspend_model: type[BaseModel] | None = None
    resume_model: type[BaseModel] | None = None
    retry: RetryPolicy = field(default_factory=RetryPolicy)

    def __post_init__(self) -> None:
        self.kind = "step"


@dataclass(eq=False)
class ToolStep(Node):
    """A registered tool run as a step: its input is the tool's arguments."""

    tool_name: str = ""
    retry: RetryPolicy = field(default_factory=RetryPolicy)

    def __post_init__(self) -> None:
        self.kind = "tool"
        self.output_model = ToolStepOutput


@dataclass(eq=False)
class AgentStep(Node):
    """An agent run as a step (a child agent run workflow)."""

    agent_name: str = ""
    max_steps: int = 0

    def __post_init__(self) -> None:
        self.kind = "agent"
        self.input_model = AgentStepInput
        self.output_model = AgentStepOutput


@dataclass(eq=False)
class NestedWorkflow(Node):
    """Another definition run as one step; its steps appear under this step's path."""

    workflow: Workflow | None = None

    def __post_init__(self) -> None:
        self.kind = "workflow"


@dataclass(eq=False)
class MapNode(Node):
    """Reshapes data between steps, deterministically, inside the workflow."""

    fn: Mapping | None = None

    def __post_init__(self) -> None:
        self.kind = "map"


@dataclass(eq=False)
class Sleep(Node):
    duration: timedelta = timedelta(0)

    def __post_init__(self) -> None:
        self.kind = "sleep"


@dataclass(eq=False)
class SleepUntil(Node):
    fn: WakeTime | None = None

    def __post_init__(self) -> None:
        self.kind = "sleep_until"


@dataclass(eq=False)
class Branch(Node):
    """The first node whose condition holds runs, else the default; the others are skipped."""

    branches: list[tuple[Condition, Node]] = field(default_factory=list)
    default: Node | None = None

    def __post_init__(self) -> None:
        self.kind = "branch"

    def children(self) -> list[Node]:
        return [node for _, node in self.branches] + ([self.default] if self.default else [])


@dataclass(eq=False)
class Parallel(Node):
    """Every child runs concurrently on the same input; the output maps child id -> output."""

    nodes: list[Node] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.kind = "parallel"

    def children(self) -> list[Node]:
        return list(self.nodes)


@dataclass(eq=False)
class Foreach(Node):
    """The body runs once per item of the list field `over`; output `{"results": [...]}`."""

    body: Node | None = None
    over: str = ""
    concurrency: int = 1

    def __post_init__(self) -> None:
        self.kind = "foreach"

    def children(self) -> list[Node]:
        return [self.body] if self.body else []


@dataclass(eq=False)
class Loop(Node):
    """The body runs, then again while (do_while) or until (do_until) the condition holds
    on its output; its output feeds its next iteration."""

    body: Node | None = None
    condition: Condition | None = None
    until: bool = False
    max_iterations: int = 1000

    def __post_init__(self) -> None:
        self.kind = "do_until" if self.until else "do_while"

    def children(self) -> list[Node]:
        return [self.body] if self.body else []


def step(
    id: str,
    *,
    input: type[BaseModel],
    output: type[BaseModel],
    description: str = "",
    suspend: type[BaseModel] | None = None,
    resume: type[BaseModel] | None = None,
    retry: RetryPolicy | None = None,
) -> Callable[[StepFunction], Step]:
    """Decorator turning `async def fn(input, ctx) -> output` into a `Step`."""
    if (suspend is None) != (resume is None):
        raise InvalidDefinition(f"step {id!r}: give both suspend and resume schemas, or neither")

    def wrap(fn: StepFunction) -> Step:
        return Step(
            id=id,
            description=description or (fn.__doc__ or "").strip().split("\n")[0],
            input_model=input,
            output_model=output,
            fn=fn,
            suspend_model=suspend,
            resume_model=resume,
            retry=retry or RetryPolicy(),
        )

    return wrap


def tool_step(
    id: str,
    *,
    tool: str,
    args: type[BaseModel],
    description: str = "",
    retry: RetryPolicy | None = None,
) -> ToolStep:
    """A registered tool as a step; `args` is the tool's argument model (checked at start-up)."""
    return ToolStep(
        id=id,
        description=description or f"tool {tool}",
        input_model=args,
        tool_name=tool,
        retry=retry or RetryPolicy(),
    )


def agent_step(id: str, *, agent: str, description: str = "", max_steps: int = 0) -> AgentStep:
    """An agent as a step: input `AgentStepInput` (prompt), output `AgentStepOutput` (text)."""
    return AgentStep(
        id=id, description=description or f"agent {agent}", agent_name=agent, max_steps=max_steps
    )


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
        if not _ID.match(self.id):
            raise InvalidDefinition(
                f"workflow id {self.id!r} must be 1..64 of [A-Za-z0-9_-], starting with a letter"
            )
        if not self.nodes:
            raise InvalidDefinition(f"workflow {self.id!r} has no steps")
        _check_ids(self.id, self.nodes)
        produced: type[BaseModel] = self.input_model
        for node in self.nodes:
            produced = _wire(self.id, node, produced)
        _require_compatible(self.id, "output", produced, self.output_model)
        self.version = self.explicit_version or _structure_hash(self)
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
            steps=[_describe(node) for node in self.nodes],
        )


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


class WorkflowInfo(BaseModel):
    """A committed definition, as data."""

    id: str
    description: str
    version: str
    input_schema: dict[str, Any]
    output_schema: dict[str, Any]
    steps: list[StepInfo]


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


def _check_ids(workflow_id: str, nodes: Sequence[Node]) -> None:
    seen: set[str] = set()

    def visit(node: Node) -> None:
        if not _ID.match(node.id):
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


def _wire(workflow_id: str, node: Node, produced: type[BaseModel]) -> type[BaseModel]:
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
        outputs = [_wire(workflow_id, child, produced) for child in node.children()]
        node.input_model = produced
        node.output_model = _common_fields(f"{node.id.title()}Output", outputs)
        return node.output_model
    elif isinstance(node, Parallel):
        if not node.nodes:
            raise InvalidDefinition(f"{where}: parallel needs at least one step")
        fields: dict[str, Any] = {
            child.id: (_wire(workflow_id, child, produced), ...) for child in node.nodes
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
        body_output = _wire(workflow_id, node.body, item)
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
        body_output = _wire(workflow_id, node.body, produced)
        assert node.body.input_model is not None
        _require_compatible(
            workflow_id, f"{node.id} (output fed back)", body_output, node.body.input_model
        )
        node.input_model = produced
        node.output_model = body_output
        return body_output
    assert node.input_model is not None and node.output_model is not None
    _require_compatible(workflow_id, node.id, produced, node.input_model)
    return node.output_model


def _require_compatible(
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


def _callable_name(fn: Callable[..., Any] | None) -> str:
    if fn is None:
        return ""
    return getattr(fn, "__qualname__", None) or getattr(fn, "__name__", "") or repr(fn)


def _describe(node: Node) -> StepInfo:
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
    elif isinstance(node, ToolStep):
        info.tool_name = node.tool_name
        info.retry = node.retry
    elif isinstance(node, AgentStep):
        info.agent_name = node.agent_name
    elif isinstance(node, NestedWorkflow) and node.workflow:
        info.workflow_id = node.workflow.id
        info.children = [_describe(child) for child in node.workflow.nodes]
        return info
    elif isinstance(node, Sleep):
        info.sleep_duration = node.duration
    elif isinstance(node, SleepUntil):
        info.condition = _callable_name(node.fn)
    elif isinstance(node, Branch):
        for condition, child in node.branches:
            child_info = _describe(child)
            child_info.condition = _callable_name(condition)
            info.children.append(child_info)
        if node.default is not None:
            child_info = _describe(node.default)
            child_info.default_branch = True
            info.children.append(child_info)
        return info
    elif isinstance(node, Foreach):
        info.concurrency = node.concurrency
    elif isinstance(node, Loop):
        info.condition = _callable_name(node.condition)
    elif isinstance(node, MapNode):
        info.condition = _callable_name(node.fn)
    info.children = [_describe(child) for child in node.children()]
    return info


def _structure_hash(workflow: Workflow) -> str:
    """A version that changes whenever the step graph, a schema or a condition changes."""
    shape = {
        "input": workflow.input_model.model_json_schema(),
        "output": workflow.output_model.model_json_schema(),
        "steps": [_describe(node).model_dump(mode="json") for node in workflow.nodes],
        "code": [_code_of(node) for node in workflow.nodes],
    }
    digest = hashlib.sha256(json.dumps(shape, sort_keys=True, default=str).encode())
    return digest.hexdigest()[:12]


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
