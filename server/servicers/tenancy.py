"""The tenant of the RPC being served: set by the auth interceptor, read by the servicers."""

from __future__ import annotations

import contextvars

current_tenant: contextvars.ContextVar[str] = contextvars.ContextVar("loomwork_tenant")


def tenant() -> str:
    """The tenant of the RPC being served (set by the auth interceptor)."""
    return current_tenant.get()
