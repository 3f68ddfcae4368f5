"""Server interceptor that applies the status-code table to every handler.

It also refuses requests whose bytes are not a valid message: gRPC would
otherwise raise the parse error inside its own code (UNKNOWN, with an ERROR
traceback per request) before any handler or auth check runs. The request
deserializer is wrapped to return a ``MalformedRequest`` marker instead of
raising, and the handler wrapper answers it with INVALID_ARGUMENT and one
WARNING line.
"""

from __future__ import annotations

import contextlib
import inspect
import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import grpc

from services.common import logs
from services.common.errors import new_incident_id, status_for

log = logging.getLogger(__name__)


async def abort_with(context: grpc.aio.ServicerContext, exc: BaseException, method: str) -> None:
    """Ends the call with the status the table gives ``exc``; internals go to the log only."""
    code, message = status_for(exc)
    if code == grpc.StatusCode.INTERNAL:
        incident = new_incident_id()
        logs.event(log, "rpc.internal_error", logging.ERROR, method=method, incident=incident, exc_info=exc)
        message = f"{message} (incident {incident})"
    else:
        logs.event(log, "rpc.error", method=method, code=code.name, message=message)
    await context.abort(code, message)


@dataclass(frozen=True)
class MalformedRequest:
    """Stands in for request bytes that did not parse as the method's message."""

    message: str
    size: int
    error: str


def _tolerant(deserializer: Callable[[bytes], Any]) -> Callable[[bytes], Any]:
    owner = getattr(deserializer, "__self__", None)
    descriptor = getattr(owner, "DESCRIPTOR", None)
    message = getattr(descriptor, "full_name", "request")

    def deserialize(data: bytes) -> Any:
        try:
            return deserializer(data)
        except Exception as exc:  # protobuf's DecodeError, or whatever a custom deserializer raises
            return MalformedRequest(message, len(data), type(exc).__name__)

    return deserialize


async def _refuse(context: grpc.aio.ServicerContext, request: MalformedRequest, method: str) -> None:
    logs.event(log, "rpc.malformed_request", logging.WARNING, method=method, message=request.message,
               bytes=request.size, error=request.error)
    await context.abort(grpc.StatusCode.INVALID_ARGUMENT,
                        f"the request is not a valid {request.message} message")


async def _checked(requests: AsyncIterator[Any], context: grpc.aio.ServicerContext,
                   method: str) -> AsyncIterator[Any]:
    """The request stream of a client-streaming call, ending the call at a malformed message."""
    async for request in requests:
        if isinstance(request, MalformedRequest):
            await _refuse(context, request, method)
        yield request


def _guarded(behavior: Callable[..., Awaitable[Any]], method: str, streamed: bool) -> Callable[..., Any]:
    """``behavior`` refusing malformed requests and ending with the status the table gives what it raises."""
    async def wrapper(request: Any, context: grpc.aio.ServicerContext) -> Any:
        try:
            if streamed:
                request = _checked(request, context, method)
            elif isinstance(request, MalformedRequest):
                await _refuse(context, request, method)
            return await behavior(request, context)
        except grpc.aio.AbortError:
            raise
        except Exception as exc:
            await abort_with(context, exc, method)

    return wrapper


def _driven(behavior: Callable[..., Any]) -> Callable[..., Awaitable[Any]]:
    """A response-streaming handler as a coroutine: an async generator is driven here.

    gRPC drives an async generator handler itself and, when the call is
    cancelled while a message is being sent, leaves the generator suspended
    at its ``yield``. The garbage collector closes it later, in a new task and
    context, where its ``finally`` blocks run late and ``logs.job_context``
    cannot reset its token ("created in a different Context"). Here the
    generator is iterated and closed (``aclosing``) inside the handler's own
    task, also on cancellation, and each message is sent with ``context.write``.
    """
    if not inspect.isasyncgenfunction(behavior):
        return behavior

    async def writer(request: Any, context: grpc.aio.ServicerContext) -> None:
        async with contextlib.aclosing(behavior(request, context)) as responses:
            async for response in responses:
                await context.write(response)

    return writer


class ErrorMappingInterceptor(grpc.aio.ServerInterceptor):
    """Catches what a handler raises and ends the call with the mapped status."""

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler | None]],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler | None:
        handler = await continuation(handler_call_details)
        if handler is None:
            return handler
        method = handler_call_details.method
        # A namedtuple at runtime; the stubs do not say so.
        wrapped: Any = handler
        if wrapped.request_deserializer is not None:
            wrapped = wrapped._replace(request_deserializer=_tolerant(wrapped.request_deserializer))
        if wrapped.unary_unary is not None:
            return wrapped._replace(unary_unary=_guarded(wrapped.unary_unary, method, False))
        if wrapped.unary_stream is not None:
            return wrapped._replace(unary_stream=_guarded(_driven(wrapped.unary_stream), method, False))
        if wrapped.stream_unary is not None:
            return wrapped._replace(stream_unary=_guarded(wrapped.stream_unary, method, True))
        if wrapped.stream_stream is not None:
            return wrapped._replace(stream_stream=_guarded(_driven(wrapped.stream_stream), method, True))
        return handler
