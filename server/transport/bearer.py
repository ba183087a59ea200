"""Bearer tokens → callers: the one resolution behind the gRPC auth interceptor and /mcp."""

from __future__ import annotations

from collections.abc import Mapping

from loomwork.config import Settings, TokenGrant
from loomwork.errors import Unauthenticated
from server.transport.access import Principal
from server.transport.jwt_tokens import JwtVerifier

STATIC_TOKEN = "static token"


class Authenticator:
    """The static tokens of LOOMWORK_TOKENS, and JWTs when LOOMWORK_JWT_* turn them on."""

    def __init__(
        self, tokens: Mapping[str, TokenGrant], jwt_verifier: JwtVerifier | None = None
    ) -> None:
        self.tokens = dict(tokens)
        self.jwt = jwt_verifier

    @classmethod
    def from_settings(cls, settings: Settings) -> Authenticator:
        return cls(settings.token_map(), JwtVerifier.from_settings(settings))

    async def principal(self, authorization: str, *, carrier: str) -> Principal:
        """The caller of an `authorization` value (`Bearer <token>`). Unauthenticated when it
        is missing, the token is unknown or (a JWT) not valid, saying why; `carrier` says
        where to send it (gRPC metadata, an HTTP header)."""
        scheme, _, token = authorization.partition(" ")
        token = token.strip()
        if scheme.lower() != "bearer" or not token:
            raise Unauthenticated(
                f"missing credentials: send {carrier} 'authorization: Bearer <token>'"
            )
        grant = self.tokens.get(token)
        if grant is not None:
            return Principal(grant.tenant, grant.roles, STATIC_TOKEN)
        if self.jwt is not None and token.count(".") == 2:
            return await self.jwt.principal(token)
        raise Unauthenticated("unknown token")
