"""Bearer tokens → tenants: the one resolution behind the gRPC auth interceptor and /mcp."""

from __future__ import annotations

from collections.abc import Mapping

from loomwork.errors import Unauthenticated


class TenantTokens:
    """The static tokens of LOOMWORK_TOKENS and the tenant each one names."""

    def __init__(self, tokens: Mapping[str, str]) -> None:
        self.tokens = dict(tokens)

    def tenant(self, authorization: str, *, carrier: str) -> str:
        """The tenant of an `authorization` value (`Bearer <token>`). Unauthenticated when it
        is missing or the token is unknown; `carrier` says where to send it (gRPC metadata,
        an HTTP header)."""
        scheme, _, token = authorization.partition(" ")
        token = token.strip()
        if scheme.lower() != "bearer" or not token:
            raise Unauthenticated(
                f"missing credentials: send {carrier} 'authorization: Bearer <token>'"
            )
        tenant_id = self.tokens.get(token)
        if tenant_id is None:
            raise Unauthenticated("unknown token")
        return tenant_id
