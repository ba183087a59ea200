"""How agents name MCP tools (`mcp:<server>/<tool>`, `mcp:<server>/*`) and how the model sees
them: a function name that ends with the tool's own name."""

from __future__ import annotations

import re

from pydantic import BaseModel, ConfigDict

MCP_PREFIX = "mcp:"
EVERY_TOOL = "*"
SERVER_NAME = re.compile(r"^[a-z0-9_-]{1,32}$")
MAX_TOOL_NAME = 128  # the MCP spec's limit on a tool's name
_NOT_IN_FUNCTION_NAME = re.compile(r"[^A-Za-z0-9_-]")
MAX_FUNCTION_NAME = 64  # what the Chat Completions API accepts


class McpToolRef(BaseModel):
    """One tool of one MCP server."""

    model_config = ConfigDict(frozen=True)

    server: str
    tool: str

    @property
    def tool_name(self) -> str:
        """How an agent names it: `mcp:<server>/<tool>`."""
        return f"{MCP_PREFIX}{self.server}/{self.tool}"

    @property
    def function_name(self) -> str:
        """How the model sees it: `<server>__<tool>`, characters the model's API refuses as
        `_`, cut from the left to 64 characters (so it ends with the tool's own name)."""
        name = _NOT_IN_FUNCTION_NAME.sub("_", f"{self.server}__{self.tool}")
        return name[-MAX_FUNCTION_NAME:]


def is_mcp_name(name: str) -> bool:
    """Whether an agent's tool name names MCP tools."""
    return name.startswith(MCP_PREFIX)


def function_names(names: list[str]) -> list[str]:
    """The names the model sees for an agent's tool names, as far as they are known without
    the servers' lists: its own tools as named, `mcp:<server>/<tool>` by its function name
    (`mcp:<server>/*` only once the server's tools are listed)."""
    seen = []
    for name in names:
        if not is_mcp_name(name):
            seen.append(name)
            continue
        try:
            ref = parse_mcp_name(name)
        except ValueError:
            continue
        if ref.tool != EVERY_TOOL:
            seen.append(ref.function_name)
    return seen


def parse_mcp_name(name: str) -> McpToolRef:
    """`mcp:<server>/<tool>` or `mcp:<server>/*` as a ref (tool `*` for every tool); a
    ValueError says what is wrong with it."""
    server, slash, tool = name.removeprefix(MCP_PREFIX).partition("/")
    if not name.startswith(MCP_PREFIX) or not slash:
        raise ValueError("must be mcp:<server>/<tool> or mcp:<server>/*")
    if not SERVER_NAME.match(server):
        raise ValueError("the server's name must be 1..32 characters of [a-z0-9_-]")
    if not tool or len(tool) > MAX_TOOL_NAME or any(c.isspace() or c == "/" for c in tool):
        raise ValueError(
            f"the tool's name must be 1..{MAX_TOOL_NAME} characters without spaces or /, or *"
        )
    return McpToolRef(server=server, tool=tool)
