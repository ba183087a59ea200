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
    return encode_json(pydantic_core.to_json(value), threshold=threshold)


def encode_json(raw: bytes, *, threshold: int = COMPRESSION_THRESHOLD) -> bytes:
    """`encode` for JSON text already made (e.g. by a model's `model_dump_json`)."""
    if len(raw) > threshold:
        return _ZSTD + _compressor.compress(raw)
    return _PLAIN + raw


def decode_json(data: bytes) -> bytes:
    """The JSON text of an encoded value, for parsing straight into models (`validate_json`)."""
    head = data[:1]
    if head == _PLAIN:
        return data[1:]
    if head == _ZSTD:
        return _decompressor.decompress(data[1:])
    raise ValueError(f"unknown stored value format {head!r}")


def decode(data: bytes) -> Any:
    """Inverse of `encode`."""
    return pydantic_core.from_json(decode_json(data))
