"""What a tool knows about its call, and the tenant's OAuth connections it may use."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Protocol

import httpx2

from loomwork.errors import FailedPrecondition


class OAuthAccess(Protocol):
    """The process's OAuth connections (`loomwork.integrations.oauth.OAuthConnections`)."""

    async def get_access_token(
        self, tenant: str, connection_id: str, *, rejected: str | None = None
    ) -> str: ...

    async def request(
        self, tenant: str, connection_id: str, method: str, url: str, **kwargs: Any
    ) -> httpx2.Response: ...


class TenantOAuth:
    """`ctx.oauth`: the run's tenant's OAuth connections, and no other tenant's.

    Tokens are refreshed when they expire, once across replicas; a connection of another
    tenant is not found."""

    def __init__(self, access: OAuthAccess | None, tenant: str) -> None:
        self._access = access
        self._tenant = tenant

    def _connections(self) -> OAuthAccess:
        if self._access is None:
            raise FailedPrecondition("OAuth connections are not available in this process")
        return self._access

    async def get_access_token(self, connection_id: str) -> str:
        """A valid access token of the connection (refreshed first if it expired)."""
        return await self._connections().get_access_token(self._tenant, connection_id)

    async def request(
        self, connection_id: str, method: str, url: str, **kwargs: Any
    ) -> httpx2.Response:
        """An HTTP request with the connection's bearer token; on a 401, one refresh and one
        retry. `kwargs` go to httpx2 (`json=`, `params=`, `headers=`...)."""
        return await self._connections().request(self._tenant, connection_id, method, url, **kwargs)


@dataclass(frozen=True)
class ToolContext:
    """What a tool knows about the call: who, which run, a key for exactly-once effects, the
    caller's metadata, and the tenant's OAuth connections (`ctx.oauth`)."""

    tenant: str
    run_id: str
    tool_call_id: str
    thread_id: str = ""
    resource_id: str = ""
    memory_scope: str = "thread"  # where working memory lives for this agent
    # The agent's working-memory JSON schema, when it keeps structured working memory.
    working_memory_schema: dict[str, Any] | None = None
    # The caller's free-form metadata for the run (GenerateRequest.metadata).
    metadata: dict[str, Any] = field(default_factory=dict)
    oauth_connections: OAuthAccess | None = field(default=None, repr=False, compare=False)

    @property
    def idempotency_key(self) -> str:
        """Stable across retries of this call: a tool that writes stores it with the write."""
        return f"{self.run_id}:{self.tool_call_id}"

    @property
    def oauth(self) -> TenantOAuth:
        """The tenant's OAuth connections: `await ctx.oauth.get_access_token(id)`,
        `await ctx.oauth.request(id, "GET", url)`."""
        return TenantOAuth(self.oauth_connections, self.tenant)
