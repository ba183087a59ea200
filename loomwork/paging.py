"""Opaque page tokens: a keyset cursor bound to the query that produced it."""

from __future__ import annotations

import base64
import hashlib
import json

from loomwork.errors import InvalidArgument


def _scope_digest(scope: str) -> str:
    return hashlib.sha256(scope.encode()).hexdigest()[:16]


def encode_page_token(cursor: int, scope: str) -> str:
    """A token resuming after `cursor`, valid only for the same `scope` (query + filters)."""
    raw = json.dumps({"c": cursor, "s": _scope_digest(scope)}, separators=(",", ":"))
    return base64.urlsafe_b64encode(raw.encode()).decode().rstrip("=")


def decode_page_token(token: str, scope: str, *, field: str = "page_token") -> int | None:
    """The cursor in `token` (None for an empty token); InvalidArgument if it is not ours."""
    if not token:
        return None
    try:
        padded = token + "=" * (-len(token) % 4)
        data = json.loads(base64.urlsafe_b64decode(padded.encode()))
        cursor = data["c"]
        digest = data["s"]
    except (ValueError, KeyError, TypeError) as exc:
        raise InvalidArgument.field(field, "is not a token returned by a previous call") from exc
    if not isinstance(cursor, int) or digest != _scope_digest(scope):
        raise InvalidArgument.field(
            field, "belongs to a different query: pass the same filters as the first call"
        )
    return cursor
