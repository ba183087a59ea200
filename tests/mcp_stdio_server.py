"""A stdio MCP server for tests (an operator's server in LOOMWORK_MCP_SERVERS): its `shout`
tool appends the text, upper-cased, to the file named by MCP_TEST_OUT, and answers with it."""

from __future__ import annotations

import os
from pathlib import Path

from mcp.server.mcpserver import MCPServer

server = MCPServer("shouter", log_level="WARNING")


@server.tool(description="Shout a text: answers with it in capitals.")
def shout(text: str) -> dict[str, str]:
    loud = text.upper()
    with Path(os.environ["MCP_TEST_OUT"]).open("a") as out:
        out.write(loud + "\n")
    return {"shouted": loud}


if __name__ == "__main__":
    server.run("stdio")
