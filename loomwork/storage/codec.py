"""The storage write/read path's serialization: JSON, zstd-compressed above a threshold.

JSON goes through pydantic-core (Rust), several times faster than the json module here.

Encoded values start with one format byte, so a value is read back whatever the settings
were when it was written: turning compression off (`LOOMWORK_STORAGE_COMPRESSION=none`) or
moving the threshold needs no rewrite of stored data.
"""

from __future__ import annotations

from typing import Any, Literal

import pydantic_core
import zstandard

Compression = Literal["zstd", "none"]

COMPRESSION_THRESHOLD = 1024
_PLAIN = b"j"
_ZSTD = b"z"
_compressor = zstandard.ZstdCompressor(level=3)
_decompressor = zstandard.ZstdDecompressor()


class StorageCodec:
    """How values are written: JSON, zstd-compressed when longer than `threshold` bytes
    (never, with compression "none"). Reading does not depend on either setting."""

    __slots__ = ("compression", "threshold")

    def __init__(
        self, compression: Compression = "zstd", threshold: int = COMPRESSION_THRESHOLD
    ) -> None:
        if compression not in ("zstd", "none"):
            raise ValueError(f"compression must be 'zstd' or 'none', not {compression!r}")
        if threshold < 0:
            raise ValueError("the compression threshold must be 0 or more bytes")
        self.compression = compression
        self.threshold = threshold

    def encode(self, value: Any) -> bytes:
        """JSON-encode `value`, compressed as the settings say."""
        return self.encode_json(pydantic_core.to_json(value))

    def encode_json(self, raw: bytes) -> bytes:
        """`encode` for JSON text already made (e.g. by a model's `model_dump_json`)."""
        if self.compression == "zstd" and len(raw) > self.threshold:
            return _ZSTD + _compressor.compress(raw)
        return _PLAIN + raw

    def __repr__(self) -> str:
        return f"StorageCodec({self.compression!r}, threshold={self.threshold})"


DEFAULT_CODEC = StorageCodec()


def encode(value: Any, *, threshold: int = COMPRESSION_THRESHOLD) -> bytes:
    """JSON-encode `value`; compress with zstd when the JSON is longer than `threshold` bytes."""
    return StorageCodec("zstd", threshold).encode(value)


def encode_json(raw: bytes, *, threshold: int = COMPRESSION_THRESHOLD) -> bytes:
    """`encode` for JSON text already made (e.g. by a model's `model_dump_json`)."""
    return StorageCodec("zstd", threshold).encode_json(raw)


def decode_json(data: bytes) -> bytes:
    """The JSON text of an encoded value, for parsing straight into models (`validate_json`)."""
    head = data[:1]
    if head == _PLAIN:
        return data[1:]
    if head == _ZSTD:
        return _decompressor.decompress(data[1:])
    raise ValueError(f"unknown stored value format {head!r}")


def json_array(values: list[bytes]) -> bytes:
    """One JSON array of encoded JSON values, for parsing a page into models at once."""
    return b"[" + b",".join(decode_json(v) for v in values) + b"]"


def decode(data: bytes) -> Any:
    """Inverse of `encode`, whichever settings wrote `data`."""
    return pydantic_core.from_json(decode_json(data))
