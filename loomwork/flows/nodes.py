"""The nodes of a workflow definition: steps and the ways they compose, with the models
that flow between them. `Workflow` (loomwork/flows/definition.py) chains them."""

from __future__ import annotations

import re
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any, Literal, Protocol

from pydantic import BaseModel

from loomwork.flows.step_context import StepContext
from loomwork.retries import RetryPolicy
from loomwork.tools import Tool, tool_of

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

STEP_ID = re.compile(r"^[A-Za-z][A-Za-z0-9_-]{0,63}$")

StepFunction = Callable[[Any, StepContext], Awaitable[BaseModel]]
Condition = Callable[[Any], bool]
Mapping = Callable[[Any], BaseModel]
WakeTime = Callable[[Any], datetime]


class InvalidDefinition(ValueError):
    """A workflow definition that cannot run: raised when it is committed or registered."""


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
    `ctx.resume_data` (validated by `resume`) once the run is resumed. With
    `suspend_timeout`, a suspension that gets no resume data in that time ends: the step runs
    again with `resume_on_timeout` as its resume data, or fails (SuspendTimedOut) without."""

    fn: StepFunction | None = None
    suspend_model: type[BaseModel] | None = None
    resume_model: type[BaseModel] | None = None
    retry: RetryPolicy = field(default_factory=RetryPolicy)
    suspend_timeout: timedelta | None = None
    resume_on_timeout: BaseModel | None = None

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


class Definition(Protocol):
    """What a node needs of a workflow definition (`Workflow`) nested in it."""

    id: str
    description: str
    version: str
    input_model: type[BaseModel]
    output_model: type[BaseModel]
    nodes: list[Node]

    def commit(self) -> Any: ...


@dataclass(eq=False)
class NestedWorkflow(Node):
    """Another definition run as one step; its steps appear under this step's path."""

    workflow: Definition | None = None

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
    suspend_timeout: timedelta | None = None,
    resume_on_timeout: BaseModel | None = None,
) -> Callable[[StepFunction], Step]:
    """Decorator turning `async def fn(input, ctx) -> output` into a `Step`.

    A step that suspends (`suspend` and `resume` schemas) waits for its resume data for at
    most `suspend_timeout` when given; then it runs again with `resume_on_timeout` (an
    instance of `resume`) as its resume data, or, without one, fails with SuspendTimedOut."""
    if (suspend is None) != (resume is None):
        raise InvalidDefinition(f"step {id!r}: give both suspend and resume schemas, or neither")
    if suspend_timeout is not None:
        if resume is None:
            raise InvalidDefinition(f"step {id!r}: suspend_timeout needs suspend and resume")
        if suspend_timeout <= timedelta(0):
            raise InvalidDefinition(f"step {id!r}: suspend_timeout must be positive")
    if resume_on_timeout is not None:
        if suspend_timeout is None:
            raise InvalidDefinition(f"step {id!r}: resume_on_timeout needs suspend_timeout")
        if resume is None or not isinstance(resume_on_timeout, resume):
            raise InvalidDefinition(
                f"step {id!r}: resume_on_timeout must be an instance of its resume schema"
            )

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
            suspend_timeout=suspend_timeout,
            resume_on_timeout=resume_on_timeout,
        )

    return wrap


def tool_step(
    id: str,
    *,
    tool: str | Callable[..., Any],
    args: type[BaseModel] | None = None,
    description: str = "",
    retry: RetryPolicy | None = None,
) -> ToolStep:
    """A registered tool as a step. `tool` is the `@tool` function itself (the step takes its
    name, argument model, retry policy and timeout) or a tool's name (then `args`, the tool's
    argument model, is required, and the step retries as steps do by default). `retry`, when
    given, is the step's policy either way. Names and models are checked at start-up."""
    if isinstance(tool, str):
        if args is None:
            raise InvalidDefinition(f"tool step {id!r}: give `args`, the tool's argument model")
        name, policy = tool, retry or RetryPolicy()
    else:
        declared = tool_of(tool)
        if declared is None:
            raise InvalidDefinition(f"tool step {id!r}: {tool!r} is not a @tool function")
        if args is not None and args is not declared.args:
            raise InvalidDefinition(
                f"tool step {id!r}: tool {declared.name!r} takes {declared.args.__name__}, "
                f"not {args.__name__}"
            )
        name, args, policy = declared.name, declared.args, retry or tool_policy(declared)
    return ToolStep(
        id=id,
        description=description or f"tool {name}",
        input_model=args,
        tool_name=name,
        retry=policy,
    )


def tool_policy(tool: Tool) -> RetryPolicy:
    """A tool's retries and timeout as a step's policy (the step default where it has none)."""
    policy = tool.retry or RetryPolicy()
    return policy if tool.timeout is None else policy.model_copy(update={"timeout": tool.timeout})


def agent_step(id: str, *, agent: str, description: str = "", max_steps: int = 0) -> AgentStep:
    """An agent as a step: input `AgentStepInput` (prompt), output `AgentStepOutput` (text)."""
    return AgentStep(
        id=id, description=description or f"agent {agent}", agent_name=agent, max_steps=max_steps
    )
