"""`@tool`: a tool from an async function `(args: SomeModel, ctx: ToolContext) -> result`."""

from __future__ import annotations

import inspect
import re
import typing
from collections.abc import Callable
from datetime import timedelta
from typing import Any, TypeVar

from pydantic import BaseModel, TypeAdapter

from loomwork.retries import RetryPolicy
from loomwork.tools.registry import Tool
from loomwork.tools.routes import MAX_APPROVAL_TIMEOUT

F = TypeVar("F", bound=Callable[..., Any])

_TOOL_ATTRIBUTE = "__loomwork_tool__"
# What the Chat Completions API accepts as a function name.
TOOL_NAME = re.compile(r"^[A-Za-z0-9_-]{1,64}$")


def tool(
    fn: F | None = None,
    *,
    name: str | None = None,
    description: str | None = None,
    requires_approval: bool = False,
    approval_timeout: timedelta | None = None,
    timeout: timedelta | None = None,
    retry: RetryPolicy | None = None,
) -> Any:
    """Mark an async function as a tool; the function stays callable as it is.

    The name defaults to the function's, the description to its docstring. The first
    parameter's annotation (a pydantic model) is the arguments' schema; the return
    annotation (a pydantic model or a JSON type) fills the tool's result schema. With
    `retry`, an exception is retried by Temporal and reaches the model only after the last
    attempt; without it, at once. `timeout` limits one attempt. With `requires_approval`, a
    call waits for a person's decision; `approval_timeout` bounds that wait (past it the call
    is rejected and the run goes on).
    """

    def mark(fn: F) -> F:
        setattr(
            fn,
            _TOOL_ATTRIBUTE,
            tool_from_function(
                fn,
                name=name,
                description=description,
                requires_approval=requires_approval,
                approval_timeout=approval_timeout,
                timeout=timeout,
                retry=retry,
            ),
        )
        return fn

    return mark(fn) if fn is not None else mark


def tool_of(value: object) -> Tool | None:
    """The tool `@tool` made of `value`, if it made one."""
    found = getattr(value, _TOOL_ATTRIBUTE, None)
    return found if isinstance(found, Tool) else None


def tool_from_function(
    fn: Callable[..., Any],
    *,
    name: str | None = None,
    description: str | None = None,
    requires_approval: bool = False,
    approval_timeout: timedelta | None = None,
    timeout: timedelta | None = None,
    retry: RetryPolicy | None = None,
) -> Tool:
    """The `Tool` for `fn`; a TypeError says what is wrong with its signature."""
    where = f"@tool {getattr(fn, '__qualname__', fn)!r}"
    if not inspect.iscoroutinefunction(fn):
        raise TypeError(f"{where}: a tool is an async function")
    parameters = list(inspect.signature(fn).parameters.values())
    if len(parameters) != 2:
        raise TypeError(f"{where}: a tool takes (args: <pydantic model>, ctx: ToolContext)")
    hints = typing.get_type_hints(fn)
    args = hints.get(parameters[0].name)
    if not (isinstance(args, type) and issubclass(args, BaseModel)):
        raise TypeError(f"{where}: its first parameter must be annotated with a pydantic model")
    text = description or inspect.getdoc(fn) or ""
    if not text:
        raise TypeError(f"{where}: give it a description (or a docstring) for the model")
    tool_name = name or fn.__name__
    if not TOOL_NAME.match(tool_name):
        raise TypeError(f"{where}: the name {tool_name!r} must be 1..64 of [A-Za-z0-9_-]")
    if timeout is not None and timeout <= timedelta(0):
        raise TypeError(f"{where}: timeout must be positive")
    if approval_timeout is not None:
        if not requires_approval:
            raise TypeError(f"{where}: approval_timeout needs requires_approval=True")
        if not timedelta(0) < approval_timeout <= MAX_APPROVAL_TIMEOUT:
            raise TypeError(
                f"{where}: approval_timeout must be positive and at most"
                f" {MAX_APPROVAL_TIMEOUT.days} days"
            )
    return Tool(
        name=tool_name,
        description=text,
        args=args,
        run=fn,
        requires_approval=requires_approval,
        approval_timeout=approval_timeout,
        result_schema=_result_schema(hints.get("return")),
        timeout=timeout,
        retry=retry,
    )


def _result_schema(annotation: Any) -> dict[str, Any] | None:
    if annotation is None or annotation is Any or annotation is type(None):
        return None
    try:
        return TypeAdapter(annotation).json_schema()
    except Exception:  # an annotation pydantic cannot describe: no schema, not an error
        return None
