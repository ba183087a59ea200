"""The storage write/read path's serialization: JSON, zstd-compressed above a threshold.

JSON goes through pydantic-core (Rust), several times faster than the json module here.

Encoded values start with one format byte so both forms can be read back, and
the threshold can change without rewriting stored data.
"""

from __future__ import annotations

from typing import Any

import pydantic_core
import zstandard

COMPRESSION_THRESHOLD = 1024
_PLAIN = b"j"
_ZSTD = b"z"
_compressor = zstandard.ZstdCompressor(level=3)
_decompressor = zstandard.ZstdDecompressor()


def encode(value: Any, *, threshold: int = COMPRESSION_THRESHOLD) -> bytes:
    """JSON-encode `value`; compress with zstd when the JSON is longer than `threshold` bytes."""
    raw = pydantic_core.to_json(value)
    if len(raw) > threshold:
        return _ZSTD + _compressor.compress(raw)
    return _PLAIN + raw


def decode(data: bytes) -> Any:
    """Inverse of `encode`."""
    head, body = data[:1], data[1:]
    if head == _ZSTD:
        body = _decompressor.decompress(body)
    elif head != _PLAIN:
        raise ValueError(f"unknown stored value format {head!r}")
    return pydantic_core.from_json(body)
