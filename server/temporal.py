"""Connecting to Temporal with the pydantic data converter, and our search attributes."""

from __future__ import annotations

import asyncio
import logging
from datetime import timedelta

from temporalio.api.enums.v1 import IndexedValueType
from temporalio.api.operatorservice.v1 import (
    AddSearchAttributesRequest,
    ListSearchAttributesRequest,
)
from temporalio.client import Client
from temporalio.contrib.pydantic import pydantic_data_converter

from loomwork.errors import Unavailable
from workflows import search_attributes

log = logging.getLogger(__name__)

SEARCH_ATTRIBUTES = tuple(key.name for key in search_attributes.ALL)


async def connect_temporal(address: str, namespace: str, *, wait_seconds: float = 30.0) -> Client:
    """Connect, retrying for up to `wait_seconds` while the server comes up."""
    deadline = asyncio.get_running_loop().time() + wait_seconds
    while True:
        try:
            return await Client.connect(
                address, namespace=namespace, data_converter=pydantic_data_converter
            )
        except Exception as exc:  # connection refused, DNS, TLS...
            if asyncio.get_running_loop().time() > deadline:
                raise Unavailable(f"cannot reach Temporal at {address}: {exc}") from exc
            await asyncio.sleep(0.5)


async def register_search_attributes(client: Client, namespace: str) -> list[str]:
    """Add our Keyword search attributes that the namespace lacks; return the ones added."""
    existing = await client.operator_service.list_search_attributes(
        ListSearchAttributesRequest(namespace=namespace)
    )
    missing = [name for name in SEARCH_ATTRIBUTES if name not in existing.custom_attributes]
    if missing:
        await client.operator_service.add_search_attributes(
            AddSearchAttributesRequest(
                namespace=namespace,
                search_attributes={
                    name: IndexedValueType.INDEXED_VALUE_TYPE_KEYWORD for name in missing
                },
            )
        )
        log.info("registered search attributes %s", ", ".join(missing))
    return missing


async def temporal_reachable(client: Client) -> bool:
    try:
        return await client.service_client.check_health(timeout=timedelta(seconds=2))
    except Exception:
        return False
