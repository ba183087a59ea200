"""Every RPC's telemetry, as the outermost interceptor: a server span that continues the
caller's trace (W3C `traceparent` in the call's metadata) when the process traces, and the
call counted and timed by service, method and status code (`grpc_server_handled_total`,
`grpc_server_handling_seconds`, as go-grpc-prometheus names them)."""

from __future__ import annotations

import asyncio
import inspect
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import AbstractContextManager, nullcontext
from typing import Any

import grpc
from opentelemetry import metrics, propagate, trace
from opentelemetry.trace import SpanKind, Status, StatusCode

_meter = metrics.get_meter("loomwork.rpc")
_handled = _meter.create_counter(
    "grpc.server.handled", unit="{call}", description="RPCs completed, by method and code."
)
_handling = _meter.create_histogram(
    "grpc.server.handling",
    unit="s",
    description="Time to complete an RPC (a stream: to its end), by method and code.",
    explicit_bucket_boundaries_advisory=[
        0.005,
        0.01,
        0.025,
        0.05,
        0.1,
        0.25,
        0.5,
        1,
        2.5,
        5,
        10,
        30,
        60,
        300,
    ],
)
_tracer = trace.get_tracer("loomwork.rpc")
# Codes a server's span reports as errors (the caller's own mistakes are not the server's).
_SERVER_ERRORS = {
    grpc.StatusCode.UNKNOWN,
    grpc.StatusCode.DEADLINE_EXCEEDED,
    grpc.StatusCode.UNIMPLEMENTED,
    grpc.StatusCode.INTERNAL,
    grpc.StatusCode.UNAVAILABLE,
    grpc.StatusCode.DATA_LOSS,
}

Continuation = Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler]]


class RpcTelemetryInterceptor(grpc.aio.ServerInterceptor):
    """Spans (when `tracing`) and metrics of every RPC."""

    def __init__(self, *, tracing: bool) -> None:
        self.tracing = tracing
        self._wrapped: dict[str, tuple[grpc.RpcMethodHandler, grpc.RpcMethodHandler]] = {}

    async def intercept_service(
        self, continuation: Continuation, handler_call_details: grpc.HandlerCallDetails
    ) -> grpc.RpcMethodHandler:
        handler = await continuation(handler_call_details)
        method: str = handler_call_details.method
        if handler is None:
            return handler
        cached = self._wrapped.get(method)
        if cached is None or cached[0] is not handler:
            cached = (handler, self._wrap(handler, method))
            self._wrapped[method] = cached
        return cached[1]

    def _wrap(self, handler: grpc.RpcMethodHandler, method: str) -> grpc.RpcMethodHandler:
        service, _, name = method.lstrip("/").rpartition("/")
        if handler.request_streaming and handler.response_streaming:
            factory, behavior, kind = (
                grpc.stream_stream_rpc_method_handler,
                handler.stream_stream,
                "bidi_stream",
            )
        elif handler.request_streaming:
            factory, behavior, kind = (
                grpc.stream_unary_rpc_method_handler,
                handler.stream_unary,
                "client_stream",
            )
        elif handler.response_streaming:
            factory, behavior, kind = (
                grpc.unary_stream_rpc_method_handler,
                handler.unary_stream,
                "server_stream",
            )
        else:
            factory, behavior, kind = (
                grpc.unary_unary_rpc_method_handler,
                handler.unary_unary,
                "unary",
            )
        call = _Call(self.tracing, service, name, kind)
        if inspect.isasyncgenfunction(behavior):

            async def stream(request: Any, context: grpc.aio.ServicerContext) -> AsyncIterator[Any]:
                started, failure = time.perf_counter(), None
                with call.span(context) as span:
                    try:
                        async for item in behavior(request, context):
                            yield item
                    except BaseException as exc:
                        failure = exc
                        raise
                    finally:
                        call.ended(span, _code(failure, context), started)

            wrapped: Callable[..., Any] = stream
        else:

            async def unary(request: Any, context: grpc.aio.ServicerContext) -> Any:
                started, failure = time.perf_counter(), None
                with call.span(context) as span:
                    try:
                        result = behavior(request, context)
                        return await result if inspect.isawaitable(result) else result
                    except BaseException as exc:
                        failure = exc
                        raise
                    finally:
                        call.ended(span, _code(failure, context), started)

            wrapped = unary
        return factory(
            wrapped,
            request_deserializer=handler.request_deserializer,
            response_serializer=handler.response_serializer,
        )


class _Call:
    """One method's labels and span attributes."""

    def __init__(self, tracing: bool, service: str, method: str, kind: str) -> None:
        self.tracing = tracing
        self.name = f"{service}/{method}"
        self.labels = {"grpc_service": service, "grpc_method": method, "grpc_type": kind}
        self.attributes = {"rpc.system": "grpc", "rpc.service": service, "rpc.method": method}

    def span(self, context: grpc.aio.ServicerContext) -> AbstractContextManager[trace.Span | None]:
        if not self.tracing:
            return nullcontext()
        carrier = {key: str(value) for key, value in context.invocation_metadata() or ()}
        return _tracer.start_as_current_span(
            self.name,
            context=propagate.extract(carrier),
            kind=SpanKind.SERVER,
            attributes=self.attributes,
            record_exception=False,
            set_status_on_exception=False,
        )

    def ended(self, span: trace.Span | None, code: grpc.StatusCode, started: float) -> None:
        labels = {**self.labels, "grpc_code": code.name}
        _handled.add(1, labels)
        _handling.record(time.perf_counter() - started, labels)
        if span is not None:
            span.set_attribute("rpc.grpc.status_code", code.value[0])
            if code in _SERVER_ERRORS:
                span.set_status(Status(StatusCode.ERROR, code.name))


def _code(failure: BaseException | None, context: grpc.aio.ServicerContext) -> grpc.StatusCode:
    """The status an RPC ended with: the one its handler set or aborted with, else OK when
    it returned, CANCELLED when the client gave up, UNKNOWN when it raised (as grpc says)."""
    code = context.code()
    if isinstance(code, grpc.StatusCode):
        return code
    if failure is None:
        return grpc.StatusCode.OK
    if isinstance(failure, asyncio.CancelledError):
        return grpc.StatusCode.CANCELLED
    return grpc.StatusCode.UNKNOWN
