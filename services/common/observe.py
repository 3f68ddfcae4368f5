"""Metrics and traces of every gRPC call, on both ends.

``ObservingInterceptor`` is the server bootstrap's outermost interceptor: it
counts each call (started, in flight, handled by final status code, duration)
and, when tracing is on, runs it inside a server span that continues the
caller's trace. It sits outside ``ErrorMappingInterceptor``, which has already
turned every handler (streams included) into a coroutine that ends in a
status, so one wrapper sees every outcome. Health checks and reflection are
counted but not traced (probes would fill the traces).

``ClientObserver`` does the same for the calls the gateway makes: the caller
opens ``observe(rpc)`` around a call, sends ``call.metadata`` with it (the
``traceparent`` of a client span, when tracing is on) and sets ``call.code``
when it fails. The OpenTelemetry gRPC instrumentation is not used: its aio
server interceptor can only wrap async-generator handlers (ours are driven
coroutines by then), and its aio client interceptor replaces a stream's call
object with a generator that ``cancel()`` cannot reach.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import grpc
from opentelemetry.trace import Status, StatusCode

from services.common import tracing
from services.common.metrics import GrpcClientMetrics, GrpcServerMetrics

# Services whose calls are counted but never traced.
_UNTRACED = frozenset({"grpc.health.v1.Health", "grpc.reflection.v1.ServerReflection",
                       "grpc.reflection.v1alpha.ServerReflection"})
# Server-side codes that mean the server failed (OpenTelemetry's rule); others are the caller's doing.
_SERVER_ERRORS = frozenset({grpc.StatusCode.UNKNOWN, grpc.StatusCode.DEADLINE_EXCEEDED, grpc.StatusCode.UNIMPLEMENTED,
                            grpc.StatusCode.INTERNAL, grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DATA_LOSS})
_KINDS = (("unary_unary", "unary"), ("unary_stream", "server_stream"), ("stream_unary", "client_stream"),
          ("stream_stream", "bidi_stream"))


def split_method(full: str) -> tuple[str, str]:
    """``/pkg.Service/Method`` as (``pkg.Service``, ``Method``)."""
    service, _, method = full.lstrip("/").rpartition("/")
    return service, method


@dataclass
class _Series:
    """The metric children of one (type, service, method), resolved once."""

    started: Any
    in_flight: Any
    seconds: Any
    handled: Any
    labels: dict[str, str]
    codes: dict[grpc.StatusCode, Any] = field(default_factory=dict)

    def code(self, code: grpc.StatusCode) -> Any:
        child = self.codes.get(code)
        if child is None:
            child = self.codes[code] = self.handled.labels(**self.labels, grpc_code=code.name)
        return child


def _series(metrics: GrpcServerMetrics | GrpcClientMetrics, kind: str, service: str, method: str) -> _Series:
    labels = {"grpc_type": kind, "grpc_service": service, "grpc_method": method}
    return _Series(metrics.started.labels(**labels), metrics.in_flight.labels(**labels),
                   metrics.seconds.labels(**labels), metrics.handled, labels)


def _status_of(context: grpc.aio.ServicerContext) -> grpc.StatusCode:
    code = context.code()
    if isinstance(code, grpc.StatusCode):
        return code
    if isinstance(code, int):
        return next((item for item in grpc.StatusCode if item.value[0] == code), grpc.StatusCode.UNKNOWN)
    return grpc.StatusCode.UNKNOWN


class ObservingInterceptor(grpc.aio.ServerInterceptor):
    """Counts and times every call; traces it when tracing is on."""

    def __init__(self, metrics: GrpcServerMetrics) -> None:
        self._metrics = metrics
        self._series: dict[tuple[str, str], _Series] = {}

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler | None]],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler | None:
        handler: Any = await continuation(handler_call_details)
        if handler is None:
            return None
        full = handler_call_details.method
        for attribute, kind in _KINDS:
            behavior = getattr(handler, attribute)
            if behavior is not None:
                series = self._series.get((full, kind))
                if series is None:
                    series = self._series[(full, kind)] = _series(self._metrics, kind, *split_method(full))
                return handler._replace(**{attribute: self._observed(behavior, full, series)})
        return handler

    @staticmethod
    def _observed(behavior: Callable[..., Awaitable[Any]], full: str, series: _Series) -> Callable[..., Any]:
        service, method = split_method(full)
        traced = service not in _UNTRACED
        name = full.lstrip("/")
        attributes = {"rpc.system": "grpc", "rpc.service": service, "rpc.method": method}

        async def observed(request: Any, context: grpc.aio.ServicerContext) -> Any:
            series.started.inc()
            series.in_flight.inc()
            started = time.perf_counter()
            code = grpc.StatusCode.OK
            try:
                if not (traced and tracing.enabled()):
                    try:
                        result = await behavior(request, context)
                    except BaseException as exc:
                        code = _failure(exc, context)
                        raise
                    code = _status_of(context) if context.code() is not None else code
                    return result
                with tracing.server_span(name, context.invocation_metadata(), attributes) as span:
                    try:
                        result = await behavior(request, context)
                        code = _status_of(context) if context.code() is not None else code
                        return result
                    except BaseException as exc:
                        code = _failure(exc, context)
                        raise
                    finally:
                        span.set_attribute("rpc.grpc.status_code", code.value[0])
                        if code in _SERVER_ERRORS:
                            span.set_status(Status(StatusCode.ERROR, code.name))
            finally:
                series.in_flight.dec()
                series.code(code).inc()
                series.seconds.observe(time.perf_counter() - started)

        return observed


def _failure(exc: BaseException, context: grpc.aio.ServicerContext) -> grpc.StatusCode:
    """The status a call that raised ``exc`` ends with."""
    if isinstance(exc, asyncio.CancelledError):
        return grpc.StatusCode.CANCELLED
    if isinstance(exc, grpc.aio.AbortError):
        return _status_of(context)
    return grpc.StatusCode.UNKNOWN


@dataclass
class ObservedCall:
    """One outgoing call: the metadata to send with it, and its final code (set by the caller on failure)."""

    # None when there is nothing to send (tracing off).
    metadata: list[tuple[str, str]] | None
    code: grpc.StatusCode = grpc.StatusCode.OK


class ClientObserver:
    """Counts, times and (when tracing is on) traces the calls a client makes."""

    def __init__(self, metrics: GrpcClientMetrics) -> None:
        self._metrics = metrics
        self._series: dict[tuple[str, str], _Series] = {}

    @contextmanager
    def observe(self, full: str, kind: str) -> Iterator[ObservedCall]:
        """Around one call of ``/pkg.Service/Method``; a cancelled or failed call must set ``code``.

        With tracing on, the call carries the current span's context: the
        callee's server span is the call in the trace. No client span is made:
        three per job cost the gateway ~4 % of its CPU at 500 concurrent jobs
        (bench/gateway.py), and the client metrics time the calls anyway.
        """
        series = self._series.get((full, kind))
        if series is None:
            series = self._series[(full, kind)] = _series(self._metrics, kind, *split_method(full))
        series.started.inc()
        series.in_flight.inc()
        started = time.perf_counter()
        call = ObservedCall((tracing.inject(tracing.current_span()) or None) if tracing.enabled() else None)
        try:
            yield call
        except (asyncio.CancelledError, GeneratorExit):  # the caller left (a stream closed early counts too)
            if call.code == grpc.StatusCode.OK:
                call.code = grpc.StatusCode.CANCELLED
            raise
        except BaseException:
            if call.code == grpc.StatusCode.OK:
                call.code = grpc.StatusCode.UNKNOWN
            raise
        finally:
            series.in_flight.dec()
            series.code(call.code).inc()
            series.seconds.observe(time.perf_counter() - started)
