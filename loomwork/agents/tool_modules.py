"""The application's own tools and agents: Python modules named in LOOMWORK_TOOL_MODULES,
imported by every worker and server, holding `@tool` functions and `AgentDefinition`s."""

from __future__ import annotations

import importlib
from dataclasses import dataclass, field

from loomwork.agents.definitions import AgentDefinition
from loomwork.errors import FailedPrecondition
from loomwork.guardrails.custom import CustomProcessor, processor_of
from loomwork.tools import Tool, tool_of


@dataclass
class ToolModules:
    """What the modules define: their tools, guardrail processors and code-defined agents."""

    modules: list[str] = field(default_factory=list)
    tools: list[Tool] = field(default_factory=list)
    agents: list[AgentDefinition] = field(default_factory=list)
    processors: list[CustomProcessor] = field(default_factory=list)


def load_tool_modules(names: str) -> ToolModules:
    """Import the comma-separated modules; collect every `@tool` and `@processor` function
    and every `AgentDefinition` at their top level (one imported into several modules
    counts once)."""
    found = ToolModules()
    seen: set[int] = set()
    for name in (n.strip() for n in names.split(",")):
        if not name:
            continue
        try:
            module = importlib.import_module(name)
        except ImportError as exc:
            raise FailedPrecondition(
                f"LOOMWORK_TOOL_MODULES names {name!r}, which cannot be imported: {exc}"
            ) from exc
        found.modules.append(name)
        for value in vars(module).values():
            if id(value) in seen:
                continue
            tool = tool_of(value)
            if tool is not None:
                seen.add(id(value))
                found.tools.append(tool)
            elif (custom := processor_of(value)) is not None:
                seen.add(id(value))
                found.processors.append(custom)
            elif isinstance(value, AgentDefinition):
                seen.add(id(value))
                found.agents.append(value)
    return found
