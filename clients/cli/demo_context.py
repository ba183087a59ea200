"""What the demo's sections share: `DemoContext` (the client, the console, what earlier
sections made) and `DemoSection`."""

from __future__ import annotations

import secrets
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import grpc
from rich.console import Console
from rich.markup import escape

from clients.client import LoomworkClient
from clients.errors import error_details

# The agent a stack in demo mode serves (loomwork/demo/agents.py).
DEMO_AGENT = "assistant"


@dataclass
class DemoContext:
    """What the demo's sections share: the client, the console and what earlier sections made."""

    client: LoomworkClient
    console: Console
    address: str
    token: str
    other_token: str | None = None
    thread_id: str = ""
    state: dict[str, Any] = field(default_factory=dict)

    def ok(self, text: str) -> None:
        self.console.print(f"  [green]✓[/] {text}")

    def note(self, text: str) -> None:
        self.console.print(f"  [dim]{text}[/]")

    async def expect_error(
        self, call: Awaitable[Any], code: grpc.StatusCode
    ) -> grpc.aio.AioRpcError | None:
        """Awaits a call that should fail with `code`; prints what came back either way."""
        try:
            await call
        except grpc.aio.AioRpcError as err:
            mark = "[green]✓[/]" if err.code() == code else "[red]✗[/]"
            self.console.print(f"  {mark} {err.code().name}: {escape(err.details() or '')}")
            for field_path, description in error_details(err):
                self.console.print(
                    f"      field [bold]{escape(field_path)}[/]: {escape(description)}"
                )
            return err
        self.console.print(f"  [red]✗ expected {code.name}, but the call succeeded[/]")
        return None


@dataclass(frozen=True)
class DemoSection:
    """One titled step of the demo."""

    title: str
    run: Callable[[DemoContext], Awaitable[None]]


def message_id(ctx: DemoContext, name: str) -> str:
    # Message ids are unique per tenant: a random prefix per run keeps reruns from colliding.
    prefix = ctx.state.setdefault("message_id_prefix", f"demo-{secrets.token_hex(3)}")
    return f"{prefix}.{name}"
