"""The one table that maps failures to gRPC status codes.

Service code raises the exceptions below (or lets library errors through);
``ErrorMappingInterceptor`` turns them into a gRPC status with a clear message.
Anything not in the table becomes INTERNAL with a generic message: its details
and traceback go to the log only, never to the caller.
"""

from __future__ import annotations

import asyncio
import uuid

import grpc


class FacegenError(Exception):
    """Base of the errors whose message is safe and useful to show the caller."""

    code: grpc.StatusCode = grpc.StatusCode.INTERNAL


class InvalidInput(FacegenError):
    """The request is malformed: says which field and the allowed range."""

    code = grpc.StatusCode.INVALID_ARGUMENT


class NotFound(FacegenError):
    """The named job, model or object does not exist."""

    code = grpc.StatusCode.NOT_FOUND


class ResourceExhausted(FacegenError):
    """A queue is full, or an upstream answered 429, or a device ran out of memory."""

    code = grpc.StatusCode.RESOURCE_EXHAUSTED


class Unavailable(FacegenError):
    """An upstream (storage, generator, swapper, endpoint) cannot be reached or is not ready."""

    code = grpc.StatusCode.UNAVAILABLE


class DeadlineExceeded(FacegenError):
    """The work did not finish within its deadline."""

    code = grpc.StatusCode.DEADLINE_EXCEEDED


class Cancelled(FacegenError):
    """The caller cancelled the work."""

    code = grpc.StatusCode.CANCELLED


class AlreadyExists(FacegenError):
    """The request names something that exists already in another form (an idempotency key reused)."""

    code = grpc.StatusCode.ALREADY_EXISTS


class FailedPrecondition(FacegenError):
    """The request is valid but cannot run in the current state (e.g. a finished job)."""

    code = grpc.StatusCode.FAILED_PRECONDITION


# Library exceptions that have an obvious status. Order matters: first match wins.
_LIBRARY_TABLE: tuple[tuple[type[BaseException], grpc.StatusCode, str], ...] = (
    (asyncio.CancelledError, grpc.StatusCode.CANCELLED, "the call was cancelled"),
    (TimeoutError, grpc.StatusCode.DEADLINE_EXCEEDED, "the deadline was exceeded"),
    (ConnectionError, grpc.StatusCode.UNAVAILABLE, "an upstream service is unavailable"),
)

# Codes of an upstream gRPC error that are passed through with their details;
# the rest become INTERNAL, because their details may describe another
# service's internals.
_PASS_THROUGH = frozenset({
    grpc.StatusCode.INVALID_ARGUMENT, grpc.StatusCode.NOT_FOUND,
    grpc.StatusCode.RESOURCE_EXHAUSTED, grpc.StatusCode.UNAVAILABLE,
    grpc.StatusCode.DEADLINE_EXCEEDED, grpc.StatusCode.CANCELLED,
    grpc.StatusCode.FAILED_PRECONDITION,
})


def status_for(exc: BaseException) -> tuple[grpc.StatusCode, str]:
    """The gRPC status code and the caller-safe message for ``exc``."""
    if isinstance(exc, FacegenError):
        return exc.code, str(exc)
    if isinstance(exc, grpc.aio.AioRpcError):
        code = exc.code()
        if code in _PASS_THROUGH:
            return code, exc.details() or code.name.lower()
        return grpc.StatusCode.INTERNAL, "an upstream service failed"
    for kind, code, message in _LIBRARY_TABLE:
        if isinstance(exc, kind):
            return code, message
    return grpc.StatusCode.INTERNAL, "internal error"


def is_internal(exc: BaseException) -> bool:
    """True when ``exc`` maps to INTERNAL, i.e. its details belong in the log only."""
    return status_for(exc)[0] == grpc.StatusCode.INTERNAL


def new_incident_id() -> str:
    """A short id that ties a generic INTERNAL message to its log line."""
    return uuid.uuid4().hex[:12]
