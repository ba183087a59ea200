"""Typed async Python client for Loomwork's gRPC services.

    async with LoomworkClient("127.0.0.1:50051", token="dev") as client:
        thread = await client.memory.create_thread(resource_id="user-1", title="Support")
        await client.memory.append_messages(thread.id, [text_message("user", "hi")])
        async for message in client.memory.iter_messages(thread.id):
            ...

One client per service, each in its own module, over one channel: `client.memory`,
`client.agents`, `client.workflows`, `client.rag`, `client.integrations`, `client.usage`,
`client.schedules`.
Every call carries `authorization: Bearer <token>` and a deadline (`timeout` seconds, per
client, overridable per call). Calls that fail with UNAVAILABLE are retried by gRPC itself
(exponential backoff from the channel's service config), so a server that comes up a moment
late is reached. Errors are the plain `grpc.aio.AioRpcError`; `error_details()`
(`clients.errors`) extracts the field violations of an INVALID_ARGUMENT status.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from types import TracebackType
from typing import Any, Self

import grpc

from clients.agents import AgentsClient
from clients.integrations import IntegrationsClient
from clients.memory import MemoryClient
from clients.rag import RagClient
from clients.schedules import SchedulesClient
from clients.transport import Transport
from clients.usage import UsageClient
from clients.workflows import WorkflowsClient

__all__ = ["DEFAULT_ADDRESS", "DEFAULT_TIMEOUT", "RETRY_SERVICE_CONFIG", "LoomworkClient"]

DEFAULT_ADDRESS = "127.0.0.1:50051"
DEFAULT_TIMEOUT = 10.0

# gRPC's built-in retries (gRFC A6): a call that fails with UNAVAILABLE before the server answered
# is retried with exponential backoff, up to 5 attempts in all. `name: [{}]` applies the policy to
# every method of every service on the channel.
RETRY_SERVICE_CONFIG: dict[str, Any] = {
    "methodConfig": [
        {
            "name": [{}],
            "retryPolicy": {
                "maxAttempts": 5,
                "initialBackoff": "0.1s",
                "maxBackoff": "2s",
                "backoffMultiplier": 2,
                "retryableStatusCodes": ["UNAVAILABLE"],
            },
        }
    ]
}


class LoomworkClient:
    """Async client of Loomwork's gRPC services; use as `async with LoomworkClient(...) as c:`.

    `timeout` is the default deadline of each call in seconds (None: no deadline); every method
    takes `timeout=` to override it for that call. `credentials` switches to a TLS channel.
    """

    def __init__(
        self,
        address: str = DEFAULT_ADDRESS,
        token: str | None = None,
        *,
        timeout: float | None = DEFAULT_TIMEOUT,
        wait_for_ready: bool = False,
        credentials: grpc.ChannelCredentials | None = None,
        max_message_bytes: int = 64 * 1024 * 1024,
        options: Sequence[tuple[str, Any]] = (),
    ) -> None:
        self.address = address
        channel_options: list[tuple[str, Any]] = [
            ("grpc.enable_retries", 1),
            ("grpc.service_config", json.dumps(RETRY_SERVICE_CONFIG)),
            # Reconnect quickly to a server that was not up yet (the defaults back off to 120 s).
            ("grpc.initial_reconnect_backoff_ms", 100),
            ("grpc.min_reconnect_backoff_ms", 100),
            ("grpc.max_reconnect_backoff_ms", 1000),
            ("grpc.max_receive_message_length", max_message_bytes),
            ("grpc.max_send_message_length", max_message_bytes),
            *options,
        ]
        if credentials is None:
            channel = grpc.aio.insecure_channel(address, options=channel_options)
        else:
            channel = grpc.aio.secure_channel(address, credentials, options=channel_options)
        self.transport = Transport(channel, token, timeout=timeout, wait_for_ready=wait_for_ready)
        self.memory = MemoryClient(self.transport)
        self.agents = AgentsClient(self.transport)
        self.workflows = WorkflowsClient(self.transport)
        self.schedules = SchedulesClient(self.transport)
        self.rag = RagClient(self.transport)
        self.integrations = IntegrationsClient(self.transport)
        self.usage = UsageClient(self.transport)

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()

    async def close(self, grace: float | None = None) -> None:
        """Closes the channel; calls in flight are cancelled (after `grace` seconds if given)."""
        await self.transport.channel.close(grace)

    @property
    def channel(self) -> grpc.aio.Channel:
        """The underlying channel, to build stubs of services this client has no methods for."""
        return self.transport.channel

    @property
    def timeout(self) -> float | None:
        """The default deadline of each call, in seconds (None: no deadline)."""
        return self.transport.timeout

    def call_options(self, timeout: float | None = None) -> dict[str, Any]:
        """Keyword arguments for a stub call: auth metadata, deadline, wait_for_ready."""
        return self.transport.call_options(timeout)
