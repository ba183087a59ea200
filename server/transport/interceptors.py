"""Cross-cutting concerns of every RPC: authentication and access, request validation, error
mapping."""

from __future__ import annotations

import inspect
import logging
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import grpc
import pydantic
from temporalio.client import WorkflowUpdateFailedError

from loomwork.errors import InvalidArgument, LoomworkError, PermissionDenied, Unauthenticated
from server.servicers.tenancy import current_tenant
from server.transport.access import RULES, AccessRules, current_principal
from server.transport.bearer import Authenticator
from server.transport.errors import (
    pydantic_violations,
    to_rpc_status,
    unreachable_dependency,
    update_rejection,
)
from server.transport.validation import RequestValidator, tolerant_deserializer

log = logging.getLogger(__name__)

# Services anyone may call without a token (probes and tooling).
PUBLIC_SERVICES = (
    "grpc.health.v1.Health",
    "grpc.reflection.v1alpha.ServerReflection",
    "grpc.reflection.v1.ServerReflection",
)


class WrappingInterceptor(grpc.aio.ServerInterceptor):
    """Wraps each method's behavior once (cached per method) with `before`, `check_request`
    and `on_error`."""

    def __init__(self) -> None:
        self._wrapped: dict[str, tuple[grpc.RpcMethodHandler, grpc.RpcMethodHandler]] = {}

    def applies_to(self, method: str) -> bool:
        return True

    async def before(self, context: grpc.aio.ServicerContext, method: str) -> None:
        """Runs before the behavior of `method`; may abort the call."""

    def check_request(self, request: Any) -> None:
        """Runs on the request (on each message of a client stream, as the behavior reads
        it) after `before`; may raise."""

    def wrap_deserializer(self, deserializer: Callable[[bytes], Any]) -> Callable[[bytes], Any]:
        """The method's request deserializer, or one in its place; the default keeps it."""
        return deserializer

    async def on_error(
        self, exc: Exception, context: grpc.aio.ServicerContext, method: str
    ) -> None:
        """Handles an exception of the behavior; the default re-raises it."""
        raise exc

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler]],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler:
        handler = await continuation(handler_call_details)
        method: str = handler_call_details.method
        if handler is None or not self.applies_to(method):
            return handler
        cached = self._wrapped.get(method)
        if cached is None or cached[0] is not handler:
            cached = (handler, self._wrap_handler(handler, method))
            self._wrapped[method] = cached
        return cached[1]

    def _wrap_handler(self, handler: grpc.RpcMethodHandler, method: str) -> grpc.RpcMethodHandler:
        if handler.request_streaming and handler.response_streaming:
            factory, behavior = grpc.stream_stream_rpc_method_handler, handler.stream_stream
        elif handler.request_streaming:
            factory, behavior = grpc.stream_unary_rpc_method_handler, handler.stream_unary
        elif handler.response_streaming:
            factory, behavior = grpc.unary_stream_rpc_method_handler, handler.unary_stream
        else:
            factory, behavior = grpc.unary_unary_rpc_method_handler, handler.unary_unary
        return factory(
            self._wrap_behavior(behavior, method, handler.request_streaming),
            request_deserializer=self.wrap_deserializer(handler.request_deserializer),
            response_serializer=handler.response_serializer,
        )

    def _wrap_behavior(
        self, behavior: Callable[..., Any], method: str, request_streaming: bool
    ) -> Callable[..., Any]:
        before, on_error, check = self.before, self.on_error, self.check_request

        async def checked_stream(requests: AsyncIterator[Any]) -> AsyncIterator[Any]:
            async for request in requests:
                check(request)
                yield request

        def checked(request: Any) -> Any:
            if request_streaming:
                return checked_stream(request)
            check(request)
            return request

        if inspect.isasyncgenfunction(behavior):

            async def stream(request: Any, context: Any) -> AsyncIterator[Any]:
                try:
                    await before(context, method)
                    async for item in behavior(checked(request), context):
                        yield item
                except Exception as exc:
                    await on_error(exc, context, method)

            return stream

        async def unary(request: Any, context: Any) -> Any:
            try:
                await before(context, method)
                result = behavior(checked(request), context)
                if inspect.isawaitable(result):
                    result = await result
                return result
            except Exception as exc:
                await on_error(exc, context, method)

        return unary


class AuthInterceptor(WrappingInterceptor):
    """`authorization: Bearer <token>` → the caller and its tenant; a missing, unknown or
    invalid token is UNAUTHENTICATED (saying why), a caller without the role the rpc's
    `(loomwork.v1.access)` option needs is PERMISSION_DENIED (naming the role)."""

    def __init__(self, auth: Authenticator, rules: AccessRules = RULES) -> None:
        super().__init__()
        self.auth = auth
        self.rules = rules

    def applies_to(self, method: str) -> bool:
        return not method.lstrip("/").startswith(PUBLIC_SERVICES)

    async def before(self, context: grpc.aio.ServicerContext, method: str) -> None:
        header = ""
        for key, value in context.invocation_metadata() or ():
            if key == "authorization":
                header = str(value)
                break
        try:
            principal = await self.auth.principal(header, carrier="metadata")
        except Unauthenticated as error:
            await context.abort(grpc.StatusCode.UNAUTHENTICATED, error.message)
        try:
            self.rules.authorize(principal, method)
        except PermissionDenied as error:
            await context.abort(grpc.StatusCode.PERMISSION_DENIED, error.message)
        current_principal.set(principal)
        current_tenant.set(principal.tenant)


class ValidationInterceptor(WrappingInterceptor):
    """Every request of every service, checked before its handler runs (server/transport/
    validation.py): the protos' buf.validate rules, then the boundary check of every field.
    A bad request raises InvalidArgument naming each bad field, which ErrorInterceptor maps
    to INVALID_ARGUMENT with google.rpc.BadRequest field violations."""

    def __init__(self, validator: RequestValidator | None = None) -> None:
        super().__init__()
        self.validator = validator or RequestValidator()

    def applies_to(self, method: str) -> bool:
        return not method.lstrip("/").startswith(PUBLIC_SERVICES)

    def wrap_deserializer(self, deserializer: Callable[[bytes], Any]) -> Callable[[bytes], Any]:
        # gRPC answers a request that fails to parse (nested too deep, invalid UTF-8) with
        # INTERNAL before any interceptor runs: parse it here, and let check_request say why.
        return tolerant_deserializer(deserializer)

    def check_request(self, request: Any) -> None:
        self.validator.check(request)


class ErrorInterceptor(WrappingInterceptor):
    """Domain errors → their status; anything unexpected → INTERNAL with a logged incident id."""

    async def on_error(
        self, exc: Exception, context: grpc.aio.ServicerContext, method: str
    ) -> None:
        if isinstance(exc, grpc.aio.AbortError):  # context.abort(): already a status
            raise exc
        if isinstance(exc, pydantic.ValidationError):
            exc = InvalidArgument(pydantic_violations(exc))
        if isinstance(exc, WorkflowUpdateFailedError):  # a workflow refused the request
            exc = update_rejection(exc)
        exc = unreachable_dependency(exc) or exc
        if isinstance(exc, LoomworkError):
            log.debug("%s -> %s", method, exc.message)
            await context.abort_with_status(to_rpc_status(exc))
        incident = uuid.uuid4().hex[:12]
        log.exception("%s failed unexpectedly (incident %s)", method, incident, exc_info=exc)
        await context.abort(grpc.StatusCode.INTERNAL, f"internal error (incident {incident})")
