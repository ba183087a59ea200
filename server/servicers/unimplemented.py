"""Servicers for RPCs whose issue has not landed: each answers UNIMPLEMENTED, saying which issue."""

from __future__ import annotations

from typing import Any, NoReturn

import grpc
from google.protobuf.descriptor import ServiceDescriptor


async def abort_unimplemented(
    context: grpc.aio.ServicerContext, rpc: str, *, issue: int
) -> NoReturn:
    await context.abort(
        grpc.StatusCode.UNIMPLEMENTED, f"{rpc} is not implemented yet (tracked in issue #{issue})"
    )
    raise AssertionError("unreachable")  # context.abort raises


def unimplemented_servicer(base: type, service: ServiceDescriptor, *, issue: int) -> Any:
    """An instance of the generated servicer `base` whose every method answers UNIMPLEMENTED."""
    namespace: dict[str, Any] = {}
    for method in service.methods:
        rpc = f"{service.name}.{method.name}"

        async def handler(self: Any, request: Any, context: Any, _rpc: str = rpc) -> Any:
            await abort_unimplemented(context, _rpc, issue=issue)

        namespace[method.name] = handler
    return type(f"Unimplemented{service.name}", (base,), namespace)()
