"""Opaque page tokens: a cursor bound to the query that produced it.

The cursor is a keyset position (an int such as a sequence number, or a string such as a
name or another system's own page token); the token also carries a digest of the query's
scope, so a token is refused when the filters change between pages.
"""

from __future__ import annotations

import base64
import hashlib
import json

from loomwork.errors import InvalidArgument


def _scope_digest(scope: str) -> str:
    return hashlib.sha256(scope.encode()).hexdigest()[:16]


def _encode(cursor: int | str, scope: str) -> str:
    raw = json.dumps({"c": cursor, "s": _scope_digest(scope)}, separators=(",", ":"))
    return base64.urlsafe_b64encode(raw.encode()).decode().rstrip("=")


def _decode(token: str, scope: str, field: str, kind: type) -> object:
    try:
        padded = token + "=" * (-len(token) % 4)
        data = json.loads(base64.urlsafe_b64decode(padded.encode()))
        cursor = data["c"]
        digest = data["s"]
    except (ValueError, KeyError, TypeError) as exc:
        raise InvalidArgument.field(field, "is not a token returned by a previous call") from exc
    if not isinstance(cursor, kind) or digest != _scope_digest(scope):
        raise InvalidArgument.field(
            field, "belongs to a different query: pass the same filters as the first call"
        )
    return cursor


def encode_page_token(cursor: int, scope: str) -> str:
    """A token resuming after `cursor`, valid only for the same `scope` (query + filters)."""
    return _encode(cursor, scope)


def decode_page_token(token: str, scope: str, *, field: str = "page_token") -> int | None:
    """The cursor in `token` (None for an empty token); InvalidArgument if it is not ours."""
    if not token:
        return None
    cursor = _decode(token, scope, field, int)
    assert isinstance(cursor, int)
    return cursor


def encode_text_token(cursor: str, scope: str) -> str:
    """`encode_page_token` for a text cursor (a name, or another system's page token)."""
    return _encode(cursor, scope)


def decode_text_token(token: str, scope: str, *, field: str = "page_token") -> str:
    """The text cursor in `token` ('' for an empty token); InvalidArgument if not ours."""
    if not token:
        return ""
    cursor = _decode(token, scope, field, str)
    assert isinstance(cursor, str)
    return cursor


def encode_bytes_token(cursor: bytes, scope: str) -> str:
    """`encode_page_token` for an opaque binary cursor (e.g. Temporal's visibility token)."""
    return _encode(base64.b64encode(cursor).decode(), scope)


def decode_bytes_token(token: str, scope: str, *, field: str = "page_token") -> bytes:
    """The binary cursor in `token` (b'' for an empty token); InvalidArgument if not ours."""
    text = decode_text_token(token, scope, field=field)
    try:
        return base64.b64decode(text, validate=True)
    except ValueError as exc:
        raise InvalidArgument.field(field, "is not a token returned by a previous call") from exc
