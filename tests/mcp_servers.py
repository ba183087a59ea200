"""Real MCP servers for tests, built with the `mcp` SDK's MCPServer: one over streamable HTTP
(uvicorn in a thread of its own, as another service would be), and a stdio script.

Their `save_note` tool writes a file per note into a directory the test reads back, with the
idempotency key the call carried in its `_meta`."""

from __future__ import annotations

import asyncio
import json
import socket
import threading
from pathlib import Path
from typing import Any

import uvicorn
from mcp.server.mcpserver import Context, MCPServer
from mcp.server.mcpserver.exceptions import ToolError
from starlette.types import ASGIApp, Receive, Scope, Send

IDEMPOTENCY_KEY_META = "loomwork/idempotency_key"
STDIO_SCRIPT = Path(__file__).with_name("mcp_stdio_server.py")


def notes_server(name: str, notes: Path) -> MCPServer:
    """An MCP server whose tools keep notes as files in `notes`."""
    server = MCPServer(name, log_level="WARNING")

    @server.tool(description="Save a note; answers with its id.")
    def save_note(title: str, body: str, ctx: Context) -> dict[str, Any]:
        meta = ctx.request_context.meta or {}
        note = {"title": title, "body": body, "key": meta.get(IDEMPOTENCY_KEY_META, "")}
        note_id = f"note-{len(list(notes.iterdir())) + 1}"
        (notes / f"{note_id}.json").write_text(json.dumps(note))
        return {"note_id": note_id, "title": title}

    @server.tool(description="Always fails, saying why.")
    async def refuse(reason: str) -> str:
        raise ToolError(f"refused: {reason}")

    return server


class _RequireHeader:
    """Answers 401 to MCP requests without the header (as an API behind a key would)."""

    def __init__(self, app: ASGIApp, header: tuple[str, str]) -> None:
        self.app = app
        self.header = (header[0].lower().encode(), header[1].encode())

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        mcp = scope["type"] == "http" and scope["path"].startswith("/mcp")
        if mcp and self.header not in scope["headers"]:
            await send({"type": "http.response.start", "status": 401, "headers": []})
            await send({"type": "http.response.body", "body": b"unauthorized"})
            return
        await self.app(scope, receive, send)


class ThreadedMcpServer:
    """An MCPServer over streamable HTTP at `url`, served by uvicorn in its own thread and
    event loop; `stop()` takes it down (a server that went away)."""

    def __init__(self, server: MCPServer, *, require_header: tuple[str, str] | None = None):
        self.server = server
        app: ASGIApp = server.streamable_http_app()
        if require_header is not None:
            app = _RequireHeader(app, require_header)
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_TCP)
        self.sock.bind(("127.0.0.1", 0))
        self.port = int(self.sock.getsockname()[1])
        self.url = f"http://127.0.0.1:{self.port}/mcp"
        self._uvicorn = uvicorn.Server(
            uvicorn.Config(app, log_level="warning", access_log=False, lifespan="on")
        )
        self._thread = threading.Thread(target=self._serve, daemon=True, name="mcp-server")

    def _serve(self) -> None:
        asyncio.run(self._uvicorn.serve(sockets=[self.sock]))

    def start(self) -> ThreadedMcpServer:
        self._thread.start()
        while not self._uvicorn.started:
            if not self._thread.is_alive():
                raise RuntimeError("the MCP server stopped while starting")
            threading.Event().wait(0.01)
        return self

    def stop(self) -> None:
        if self._thread.is_alive():
            self._uvicorn.should_exit = True
            self._thread.join(timeout=10)
        self.sock.close()
