"""`@processor`: a guardrail processor from a function `(text: str, ctx: ProcessorContext)`
returning the text to go on with (None: unchanged), or raising `trip(reason)`; and the
registry of those an application defines (modules of LOOMWORK_TOOL_MODULES)."""

from __future__ import annotations

import inspect
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, TypeVar

from loomwork.guardrails.processors import ProcessorContext
from loomwork.guardrails.settings import PROCESSOR_NAME

F = TypeVar("F", bound=Callable[..., Any])

_PROCESSOR_ATTRIBUTE = "__loomwork_processor__"


@dataclass(frozen=True)
class CustomProcessor:
    """A processor defined in code: its name, description and function."""

    name: str
    description: str
    run: Callable[[str, ProcessorContext], Any]
    uses_model: bool = False  # True: on output, only the final answer is checked

    async def process(self, text: str, ctx: ProcessorContext) -> str:
        result = self.run(text, ctx)
        if inspect.isawaitable(result):
            result = await result
        if result is None:
            return text
        if not isinstance(result, str):
            raise TypeError(f"processor {self.name!r} returned {type(result).__name__}")
        return result


def processor(
    fn: F | None = None,
    *,
    name: str | None = None,
    description: str | None = None,
    uses_model: bool = False,
) -> Any:
    """Mark a function (sync or async) `(text, ctx) -> str | None` as a guardrail processor;
    the function stays callable as it is. The name defaults to the function's."""

    def mark(fn: F) -> F:
        setattr(
            fn,
            _PROCESSOR_ATTRIBUTE,
            processor_from_function(fn, name=name, description=description, uses_model=uses_model),
        )
        return fn

    return mark(fn) if fn is not None else mark


def processor_of(value: object) -> CustomProcessor | None:
    """The processor `@processor` made of `value`, if it made one."""
    found = getattr(value, _PROCESSOR_ATTRIBUTE, None)
    return found if isinstance(found, CustomProcessor) else None


def processor_from_function(
    fn: Callable[..., Any],
    *,
    name: str | None = None,
    description: str | None = None,
    uses_model: bool = False,
) -> CustomProcessor:
    """The processor for `fn`; a TypeError says what is wrong with it."""
    where = f"@processor {getattr(fn, '__qualname__', fn)!r}"
    if len(inspect.signature(fn).parameters) != 2:
        raise TypeError(f"{where}: a processor takes (text: str, ctx: ProcessorContext)")
    processor_name = name or fn.__name__
    if not PROCESSOR_NAME.match(processor_name):
        raise TypeError(f"{where}: the name {processor_name!r} must be 1..64 of [A-Za-z0-9_-]")
    return CustomProcessor(
        name=processor_name,
        description=description or inspect.getdoc(fn) or "",
        run=fn,
        uses_model=uses_model,
    )


class ProcessorRegistry:
    """The custom processors agents may name (`custom` processors)."""

    def __init__(self, processors: list[CustomProcessor] | None = None) -> None:
        self._processors: dict[str, CustomProcessor] = {}
        for each in processors or []:
            self.register(each)

    def register(self, processor: CustomProcessor) -> None:
        if processor.name in self._processors:
            raise ValueError(f"processor {processor.name!r} is defined twice")
        self._processors[processor.name] = processor

    def find(self, name: str) -> CustomProcessor | None:
        return self._processors.get(name)

    def has(self, name: str) -> bool:
        return name in self._processors

    def all(self) -> list[CustomProcessor]:
        return sorted(self._processors.values(), key=lambda p: p.name)
