"""`loomwork mcp …`: the tenant's MCP servers, whose tools agents call (IntegrationService)."""

from __future__ import annotations

import typer
from rich.markup import escape
from rich.table import Table

from clients.cli.common import (
    connection,
    connection_callback,
    print_items,
    print_json,
    run_with_client,
    short_time,
    stdout_console,
    to_dict,
)
from clients.client import LoomworkClient
from protos.loomwork.v1 import integration_pb2

__all__ = ["mcp_app", "parse_headers", "register"]

mcp_app = typer.Typer(
    name="mcp",
    help="MCP servers whose tools agents call as `mcp:<server>/<tool>` (IntegrationService).",
    no_args_is_help=True,
    callback=connection_callback,
)

_HEADERS = typer.Option(
    [], "--header", "-H", help="An HTTP header sent with every request, NAME=VALUE (repeatable)."
)


def parse_headers(values: list[str]) -> dict[str, str]:
    """`NAME=VALUE` options as a map; one without `=` or a name is a bad parameter."""
    headers: dict[str, str] = {}
    for value in values:
        name, sep, content = value.partition("=")
        if not sep or not name.strip():
            raise typer.BadParameter(f"{value!r} is not NAME=VALUE", param_hint="--header")
        headers[name.strip()] = content
    return headers


def _source(server: integration_pb2.McpServer) -> str:
    return (
        integration_pb2.McpServerSource.Name(server.source)
        .removeprefix("MCP_SERVER_SOURCE_")
        .lower()
    )


def _print_server(server: integration_pb2.McpServer, as_json: bool, verb: str) -> None:
    if as_json:
        print_json(to_dict(server))
        return
    out = stdout_console()
    where = escape(server.url) if server.url else "stdio (operator)"
    out.print(f"{verb} [bold]{escape(server.name)}[/] at {where}: {len(server.tools)} tools")
    for tool in server.tools:
        out.print(f"  mcp:{escape(server.name)}/{escape(tool.name)}  {escape(tool.description)}")


async def _all_servers(client: LoomworkClient) -> list[integration_pb2.McpServer]:
    servers: list[integration_pb2.McpServer] = []
    token = ""
    while True:
        page = await client.integrations.list_mcp_servers(page_size=100, page_token=token)
        servers.extend(page.mcp_servers)
        token = page.next_page_token
        if not token:
            return servers


@mcp_app.command("add")
def mcp_add(
    ctx: typer.Context,
    name: str = typer.Argument(..., help="1..32 characters of [a-z0-9_-]."),
    url: str = typer.Argument(..., help="Its streamable HTTP endpoint (https, or local http)."),
    headers: list[str] = _HEADERS,
    oauth_connection: str = typer.Option(
        "", "--oauth-connection", help="An OAuth connection whose token is sent as the bearer."
    ),
    as_json: bool = typer.Option(False, "--json", help="Print JSON."),
) -> None:
    """Register an MCP server once its tools could be listed (headers are stored encrypted)."""
    parsed = parse_headers(headers)
    server = run_with_client(
        connection(ctx),
        lambda c: c.integrations.create_mcp_server(
            name, url, headers=parsed, oauth_connection_id=oauth_connection
        ),
    )
    _print_server(server, as_json, "added")


@mcp_app.command("list")
def mcp_list(
    ctx: typer.Context, as_json: bool = typer.Option(False, "--json", help="Print JSON.")
) -> None:
    """List the MCP servers this tenant's agents may use (its own and the operator's)."""
    servers = run_with_client(connection(ctx), _all_servers)
    table = Table("name", "source", "url", "tools", "listed", title="MCP servers")
    print_items(
        servers,
        as_json,
        table,
        lambda s: (
            escape(s.name),
            _source(s),
            escape(s.url),
            str(len(s.tools)),
            short_time(s.list_time),
        ),
    )


@mcp_app.command("show")
def mcp_show(
    ctx: typer.Context,
    name: str = typer.Argument(..., help="The server's name."),
    as_json: bool = typer.Option(False, "--json", help="Print JSON."),
) -> None:
    """Show one MCP server and its tools as last listed."""
    server = run_with_client(connection(ctx), lambda c: c.integrations.get_mcp_server(name))
    _print_server(server, as_json, "server")


@mcp_app.command("refresh")
def mcp_refresh(
    ctx: typer.Context,
    name: str = typer.Argument(..., help="The server's name."),
    as_json: bool = typer.Option(False, "--json", help="Print JSON."),
) -> None:
    """List the server's tools again now."""
    server = run_with_client(connection(ctx), lambda c: c.integrations.refresh_mcp_server(name))
    _print_server(server, as_json, "listed")


@mcp_app.command("remove")
def mcp_remove(
    ctx: typer.Context, name: str = typer.Argument(..., help="The server's name.")
) -> None:
    """Remove an MCP server; agents naming its tools get error results for them."""
    run_with_client(connection(ctx), lambda c: c.integrations.delete_mcp_server(name))
    stdout_console().print(f"removed MCP server {escape(name)}")


def register(app: typer.Typer) -> None:
    """Adds `loomwork mcp …` to the app."""
    app.add_typer(mcp_app, name="mcp")
