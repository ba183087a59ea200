"""Cross-cutting concerns of every RPC: authentication and error mapping."""

from __future__ import annotations

import contextvars
import inspect
import logging
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import grpc
import pydantic

from loomwork.errors import InvalidArgument, LoomworkError
from server.errors import pydantic_violations, to_rpc_status

log = logging.getLogger(__name__)

current_tenant: contextvars.ContextVar[str] = contextvars.ContextVar("loomwork_tenant")

# Services anyone may call without a token (probes and tooling).
PUBLIC_SERVICES = (
    "grpc.health.v1.Health",
    "grpc.reflection.v1alpha.ServerReflection",
    "grpc.reflection.v1.ServerReflection",
)

Behavior = Callable[..., Any]
Wrapper = Callable[[Behavior, str], Behavior]


def tenant() -> str:
    """The tenant of the RPC being served (set by the auth interceptor)."""
    return current_tenant.get()


def _wrap_handler(
    handler: grpc.RpcMethodHandler, wrap: Wrapper, method: str
) -> grpc.RpcMethodHandler:
    """The same handler with its behavior wrapped, whatever its streaming kind."""
    if handler.request_streaming and handler.response_streaming:
        factory, behavior = grpc.stream_stream_rpc_method_handler, handler.stream_stream
    elif handler.request_streaming:
        factory, behavior = grpc.stream_unary_rpc_method_handler, handler.stream_unary
    elif handler.response_streaming:
        factory, behavior = grpc.unary_stream_rpc_method_handler, handler.unary_stream
    else:
        factory, behavior = grpc.unary_unary_rpc_method_handler, handler.unary_unary
    return factory(
        wrap(behavior, method),
        request_deserializer=handler.request_deserializer,
        response_serializer=handler.response_serializer,
    )


def _around(
    behavior: Behavior,
    before: Callable[[Any], Awaitable[None]],
    on_error: Callable[..., Awaitable[None]],
) -> Behavior:
    """Run `before(context)` then the behavior; route exceptions through `on_error`."""
    if inspect.isasyncgenfunction(behavior):

        async def stream(request: Any, context: Any) -> AsyncIterator[Any]:
            try:
                await before(context)
                async for item in behavior(request, context):
                    yield item
            except Exception as exc:
                await on_error(exc, context)

        return stream

    async def unary(request: Any, context: Any) -> Any:
        try:
            await before(context)
            result = behavior(request, context)
            if inspect.isawaitable(result):
                result = await result
            return result
        except Exception as exc:
            await on_error(exc, context)

    return unary


class AuthInterceptor(grpc.aio.ServerInterceptor):
    """`authorization: Bearer <token>` → tenant; a missing or unknown token is UNAUTHENTICATED."""

    def __init__(self, tokens: dict[str, str]) -> None:
        self.tokens = dict(tokens)

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler]],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler:
        handler = await continuation(handler_call_details)
        method = handler_call_details.method
        if handler is None or method.lstrip("/").startswith(PUBLIC_SERVICES):
            return handler

        async def authenticate(context: grpc.aio.ServicerContext) -> None:
            metadata = dict(context.invocation_metadata() or ())
            header = metadata.get("authorization", "")
            scheme, _, token = str(header).partition(" ")
            if scheme.lower() != "bearer" or not token.strip():
                await context.abort(
                    grpc.StatusCode.UNAUTHENTICATED,
                    "missing credentials: send metadata 'authorization: Bearer <token>'",
                )
            tenant_id = self.tokens.get(token.strip())
            if tenant_id is None:
                await context.abort(grpc.StatusCode.UNAUTHENTICATED, "unknown token")
            current_tenant.set(tenant_id)  # type: ignore[arg-type]

        async def reraise(exc: Exception, context: Any) -> None:
            raise exc

        return _wrap_handler(handler, lambda b, m: _around(b, authenticate, reraise), method)


class ErrorInterceptor(grpc.aio.ServerInterceptor):
    """Domain errors → their status; anything unexpected → INTERNAL with a logged incident id."""

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler]],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler:
        handler = await continuation(handler_call_details)
        if handler is None:
            return handler
        method = handler_call_details.method

        async def nothing(context: Any) -> None:
            return None

        async def map_error(exc: Exception, context: grpc.aio.ServicerContext) -> None:
            if isinstance(exc, pydantic.ValidationError):
                exc = InvalidArgument(pydantic_violations(exc))
            if isinstance(exc, LoomworkError):
                log.info("%s -> %s", method, exc.message)
                await context.abort_with_status(to_rpc_status(exc))
            if _is_abort(exc):
                raise exc
            incident = uuid.uuid4().hex[:12]
            log.exception("%s failed unexpectedly (incident %s)", method, incident)
            await context.abort(grpc.StatusCode.INTERNAL, f"internal error (incident {incident})")

        return _wrap_handler(handler, lambda b, m: _around(b, nothing, map_error), method)


def _is_abort(exc: BaseException) -> bool:
    """grpc.aio signals `context.abort` with an AbortError; it must pass through untouched."""
    return isinstance(exc, grpc.aio.AbortError)
