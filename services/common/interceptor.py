"""Server interceptor that applies the status-code table to every handler."""

from __future__ import annotations

import inspect
import logging
from collections.abc import AsyncIterator, Awaitable, Callable
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
        log.error("event=rpc.internal_error method=%s incident=%s", method, incident,
                  exc_info=exc)
        message = f"{message} (incident {incident})"
    else:
        logs.event(log, "rpc.error", method=method, code=code.name, message=message)
    await context.abort(code, message)


def _wrap_unary(behavior: Callable[..., Awaitable[Any]], method: str) -> Callable[..., Any]:
    async def wrapper(request: Any, context: grpc.aio.ServicerContext) -> Any:
        try:
            return await behavior(request, context)
        except grpc.aio.AbortError:
            raise
        except Exception as exc:
            await abort_with(context, exc, method)

    return wrapper


def _wrap_stream(behavior: Callable[..., Any], method: str) -> Callable[..., Any]:
    if inspect.isasyncgenfunction(behavior):
        async def generator(request: Any, context: grpc.aio.ServicerContext) -> AsyncIterator[Any]:
            try:
                async for item in behavior(request, context):
                    yield item
            except grpc.aio.AbortError:
                raise
            except Exception as exc:
                await abort_with(context, exc, method)

        return generator
    return _wrap_unary(behavior, method)


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
        if handler.unary_unary is not None:
            return handler._replace(unary_unary=_wrap_unary(handler.unary_unary, method))  # type: ignore[attr-defined]
        if handler.unary_stream is not None:
            return handler._replace(unary_stream=_wrap_stream(handler.unary_stream, method))  # type: ignore[attr-defined]
        if handler.stream_unary is not None:
            return handler._replace(stream_unary=_wrap_unary(handler.stream_unary, method))  # type: ignore[attr-defined]
        if handler.stream_stream is not None:
            return handler._replace(stream_stream=_wrap_stream(handler.stream_stream, method))  # type: ignore[attr-defined]
        return handler
