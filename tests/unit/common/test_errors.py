"""The failure → gRPC status table."""

import asyncio

import grpc
import pytest

from services.common import errors

pytestmark = pytest.mark.unit


@pytest.mark.parametrize(
    ("exc", "code"),
    [
        (errors.InvalidInput("width must be a multiple of 8"), grpc.StatusCode.INVALID_ARGUMENT),
        (errors.NotFound("job x not found"), grpc.StatusCode.NOT_FOUND),
        (errors.ResourceExhausted("queue full"), grpc.StatusCode.RESOURCE_EXHAUSTED),
        (errors.Unavailable("storage down"), grpc.StatusCode.UNAVAILABLE),
        (errors.DeadlineExceeded("too slow"), grpc.StatusCode.DEADLINE_EXCEEDED),
        (errors.Cancelled("cancelled"), grpc.StatusCode.CANCELLED),
        (errors.FailedPrecondition("ended"), grpc.StatusCode.FAILED_PRECONDITION),
        (asyncio.CancelledError(), grpc.StatusCode.CANCELLED),
        (TimeoutError(), grpc.StatusCode.DEADLINE_EXCEEDED),
        (ConnectionRefusedError(), grpc.StatusCode.UNAVAILABLE),
    ],
)
def test_known_failures_map_to_their_code(exc: BaseException, code: grpc.StatusCode) -> None:
    assert errors.status_for(exc)[0] == code


def test_facegen_errors_keep_their_message() -> None:
    assert errors.status_for(errors.InvalidInput("steps must be in 1..100")) == (
        grpc.StatusCode.INVALID_ARGUMENT, "steps must be in 1..100")


def test_unknown_errors_are_internal_with_a_generic_message() -> None:
    code, message = errors.status_for(KeyError("s3://secret-bucket/credentials"))
    assert code == grpc.StatusCode.INTERNAL
    assert "secret" not in message
    assert errors.is_internal(RuntimeError("boom"))
    assert not errors.is_internal(errors.NotFound("x"))


def _rpc_error(code: grpc.StatusCode, details: str) -> grpc.aio.AioRpcError:
    return grpc.aio.AioRpcError(code, grpc.aio.Metadata(), grpc.aio.Metadata(), details=details)


def test_upstream_codes_pass_through_but_internals_do_not() -> None:
    assert errors.status_for(_rpc_error(grpc.StatusCode.UNAVAILABLE, "generator down")) == (
        grpc.StatusCode.UNAVAILABLE, "generator down")
    code, message = errors.status_for(_rpc_error(grpc.StatusCode.INTERNAL, "Traceback: /srv/x.py"))
    assert code == grpc.StatusCode.INTERNAL
    assert "Traceback" not in message
