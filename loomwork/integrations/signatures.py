"""Webhook signatures: `t=<unix seconds>,v1=<hex HMAC-SHA256(secret, "<t>.<body>")>`."""

from __future__ import annotations

import hashlib
import hmac
import time

from loomwork.errors import Unauthenticated


class SignatureRejected(Unauthenticated):
    """The request's signature is missing, malformed, wrong or too old."""


def compute(secret: str, timestamp: int, body: bytes) -> str:
    """The hex HMAC-SHA256 of `<timestamp>.<body>`."""
    message = str(timestamp).encode() + b"." + body
    return hmac.new(secret.encode(), message, hashlib.sha256).hexdigest()


def sign(secret: str, body: bytes, timestamp: int | None = None) -> str:
    """A signature header value for `body` (what a sender puts in the header)."""
    ts = int(time.time()) if timestamp is None else timestamp
    return f"t={ts},v1={compute(secret, ts, body)}"


def parse(header: str) -> tuple[int, list[str]]:
    """(timestamp, [v1 signatures]) from a header value; SignatureRejected if malformed."""
    timestamp: int | None = None
    signatures: list[str] = []
    for item in header.split(","):
        key, sep, value = item.strip().partition("=")
        if not sep:
            continue
        if key == "t":
            try:
                timestamp = int(value)
            except ValueError as exc:
                raise SignatureRejected("signature timestamp is not an integer") from exc
        elif key == "v1":
            signatures.append(value)
    if timestamp is None:
        raise SignatureRejected("signature has no timestamp (t=)")
    if not signatures:
        raise SignatureRejected("signature has no v1= value")
    return timestamp, signatures


def verify(
    header: str | None,
    secret: str,
    body: bytes,
    *,
    tolerance_seconds: float,
    now: float | None = None,
) -> int:
    """Check `header` against `body`; return its timestamp or raise SignatureRejected.

    Every candidate is compared in constant time; the timestamp must lie within
    `tolerance_seconds` of `now` either way.
    """
    if not header:
        raise SignatureRejected("signature header is missing")
    timestamp, candidates = parse(header)
    expected = compute(secret, timestamp, body)
    matched = False
    for candidate in candidates:
        matched |= hmac.compare_digest(expected, candidate)
    if not matched:
        raise SignatureRejected("signature does not match the body")
    current = time.time() if now is None else now
    if abs(current - timestamp) > tolerance_seconds:
        raise SignatureRejected("signature timestamp is outside the tolerance")
    return timestamp
