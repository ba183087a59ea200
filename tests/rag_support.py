"""Helpers of the RagService tests: sample documents, and indexes and ingestions made
through the gRPC stub."""

from __future__ import annotations

import asyncio

from google.protobuf import struct_pb2

from protos.loomwork.v1 import rag_pb2, rag_pb2_grpc
from tests.support import auth, unique

GUIDE = """# Loomwork guide

Loomwork runs durable agents on Temporal with memory and retrieval.

## Installing

Install the package with pip. The embedded stack starts Postgres, Valkey and Temporal.

## Troubleshooting

If the worker crashes, Temporal retries the activity on another worker. The error code
ZX-4471 means the vector index is still building; wait a minute and retry the query.
"""

ANIMALS = [
    "Cats are small domesticated carnivores that like to sleep in the sun.",
    "Dolphins are marine mammals known for their intelligence and playful behaviour.",
    "Eagles are birds of prey with sharp eyesight that hunt from great heights.",
    "Honeybees live in colonies and make honey from the nectar of flowers.",
]


async def create_index(rag: rag_pb2_grpc.RagServiceStub, token: str, **fields: object) -> str:
    """Create an index with a unique name and `fields`; its name."""
    name = unique("idx").replace("-", "_")
    await rag.CreateIndex(
        rag_pb2.CreateIndexRequest(index=rag_pb2.Index(name=name, **fields)),  # type: ignore[arg-type]
        metadata=auth(token),
    )
    return name


async def wait_ingestion(
    rag: rag_pb2_grpc.RagServiceStub, token: str, ingestion_id: str
) -> rag_pb2.Ingestion:
    """Follow the ingestion's events to its finished event (120 seconds at most)."""

    async def watch() -> rag_pb2.Ingestion:
        async for response in rag.WatchIngestion(
            rag_pb2.WatchIngestionRequest(ingestion_id=ingestion_id), metadata=auth(token)
        ):
            if response.event.HasField("finished"):
                return response.event.finished
        raise AssertionError("stream ended without a finished event")

    return await asyncio.wait_for(watch(), timeout=120)


async def ingest(
    rag: rag_pb2_grpc.RagServiceStub,
    token: str,
    index: str,
    documents: list[rag_pb2.DocumentInput],
    **fields: object,
) -> rag_pb2.Ingestion:
    """Ingest `documents` into `index` and wait until the ingestion finished."""
    response = await rag.IngestDocuments(
        rag_pb2.IngestDocumentsRequest(index_name=index, documents=documents, **fields),  # type: ignore[arg-type]
        metadata=auth(token),
    )
    return await wait_ingestion(rag, token, response.ingestion.id)


def meta(**values: object) -> struct_pb2.Struct:
    """Document metadata of `values`."""
    out = struct_pb2.Struct()
    out.update(values)
    return out
