"""The one request path every service client shares: auth metadata, deadline, typed response.

`LoomworkClient` makes one `Transport` over its channel and hands it to each service client
(`client.memory`, `client.agents`, …), so every call is made the same way.
"""

# `timeout=` is the gRPC deadline of the call, as in grpc's own API.
# ruff: noqa: ASYNC109

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from typing import Any, Protocol, TypeVar, cast

import grpc
from google.protobuf import struct_pb2
from google.protobuf.message import Message

__all__ = ["Page", "Transport", "iter_pages", "to_struct"]

ResponseT = TypeVar("ResponseT", bound=Message)
PageT = TypeVar("PageT", bound="Page")


class Page(Protocol):
    """One page of a List call's response."""

    @property
    def next_page_token(self) -> str: ...


class Transport:
    """A channel and how every call on it is made: bearer token, deadline, wait_for_ready.

    `timeout` is the default deadline in seconds (None: no deadline); a call's own `timeout`
    overrides it when not None.
    """

    def __init__(
        self,
        channel: grpc.aio.Channel,
        token: str | None,
        *,
        timeout: float | None,
        wait_for_ready: bool,
    ) -> None:
        self.channel = channel
        self.timeout = timeout
        self.wait_for_ready = wait_for_ready
        self.metadata: tuple[tuple[str, str], ...] = (
            (("authorization", f"Bearer {token}"),) if token else ()
        )

    def call_options(self, timeout: float | None = None) -> dict[str, Any]:
        """Keyword arguments for a stub call: auth metadata, deadline, wait_for_ready."""
        return {
            "metadata": self.metadata,
            "timeout": self.timeout if timeout is None else timeout,
            "wait_for_ready": self.wait_for_ready,
        }

    async def call(
        self,
        method: Callable[..., Awaitable[Any]],
        request: Any,
        response_type: type[ResponseT],
        timeout: float | None,
    ) -> ResponseT:
        """Calls a unary stub method (or a client-streaming one, given an iterator of
        requests) and returns its response as `response_type`."""
        return cast(ResponseT, await method(request, **self.call_options(timeout)))

    async def events(
        self,
        method: Callable[..., AsyncIterator[Any]],
        request: Any,
        timeout: float | None,
        *,
        no_deadline: bool = False,
        keep_alives: bool = False,
    ) -> AsyncIterator[Any]:
        """Calls a server-streaming stub method and yields the `event` of each response.

        `no_deadline=True`: the stream lasts as long as the work it follows, whatever the
        client's default deadline. Keep-alives (the `keep_alive` a quiet stream sends: not
        events of the run, their `event_id` the last real one's) are left out unless
        `keep_alives=True`."""
        options = self.call_options(timeout)
        if no_deadline:
            options["timeout"] = None
        async for response in method(request, **options):
            event = response.event
            if keep_alives or not event.HasField("keep_alive"):
                yield event


async def iter_pages(fetch: Callable[[str], Awaitable[PageT]]) -> AsyncIterator[PageT]:
    """Every page of a List call, first to last: `fetch(page_token)` gets one page."""
    page_token = ""
    while True:
        page = await fetch(page_token)
        yield page
        page_token = page.next_page_token
        if not page_token:
            return


def to_struct(data: Mapping[str, Any] | None) -> struct_pb2.Struct | None:
    """A JSON-like mapping as a `google.protobuf.Struct` (None stays None: the field unset)."""
    if data is None:
        return None
    struct = struct_pb2.Struct()
    struct.update(dict(data))
    return struct
