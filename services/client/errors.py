"""The one error type the client raises for what the gateway refused or could not do."""

from __future__ import annotations

import grpc


class GatewayError(Exception):
    """A call failed for good: refused (bad input, unknown job, at capacity, ...) or never reachable.

    ``code`` is the gRPC status (``INVALID_ARGUMENT``, ``NOT_FOUND``, ...);
    ``details`` the gateway's message, or the client's own when it gave up
    re-attaching. ``job_id`` and ``last_seq`` say where a job stream stopped,
    so that the caller can ``watch(job_id, after_seq=last_seq)`` later.
    """

    def __init__(self, code: grpc.StatusCode, details: str, job_id: str | None = None, last_seq: int = 0) -> None:
        super().__init__(f"{code.name}: {details}")
        self.code = code
        self.details = details
        self.job_id = job_id
        self.last_seq = last_seq

    @classmethod
    def from_rpc(cls, error: grpc.RpcError, job_id: str | None = None, last_seq: int = 0) -> GatewayError:
        """The GatewayError for a gRPC error (sync or asyncio)."""
        code, details = status_of(error)
        return cls(code, details, job_id, last_seq)


class JobLostError(GatewayError):
    """The gateway no longer knows a job the client was following.

    It happens when the job's gateway was restarted or replaced while using
    the in-memory job store (the job died with it), or when the job ended
    longer ago than the gateway keeps jobs (``GATEWAY_JOB_TTL_SECONDS``).
    The client never resubmits such a job by itself: that would run it again.
    """


def status_of(error: grpc.RpcError) -> tuple[grpc.StatusCode, str]:
    """The status code and details of a gRPC error; UNKNOWN when it carries none."""
    # Sync errors are grpc.Call objects, asyncio ones (AioRpcError) are not, but both have these methods.
    code = error.code() if callable(getattr(error, "code", None)) else None
    details = error.details() if callable(getattr(error, "details", None)) else None
    return (code if isinstance(code, grpc.StatusCode) else grpc.StatusCode.UNKNOWN), (details or str(error))
