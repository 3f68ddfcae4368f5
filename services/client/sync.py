"""The blocking client: ``FacegenClient`` and the ``JobStream`` it returns for run and watch."""

from __future__ import annotations

import logging
import time
import uuid
from collections.abc import Callable, Generator, Iterator, Sequence
from types import TracebackType
from typing import Any, TypeVar

import grpc

from facegen.v1 import common_pb2, gateway_pb2, gateway_pb2_grpc
from services.client.channel import auth_metadata, channel_options, credentials
from services.client.resume import JobFollower, StreamView
from services.client.retry import Retrier, RetryPolicy

log = logging.getLogger(__name__)

# How long the clean-up after a caller's interrupt may take (Cancel waits up to 5 s for the job's end).
CANCEL_TIMEOUT = 10.0
Reply = TypeVar("Reply")


def with_key(request: gateway_pb2.JobRequest) -> gateway_pb2.JobRequest:
    """``request`` itself when it has an idempotency key, else a copy with a new random one."""
    if request.idempotency_key:
        return request
    keyed = gateway_pb2.JobRequest()
    keyed.CopyFrom(request)
    keyed.idempotency_key = f"facegen-client-{uuid.uuid4().hex}"
    return keyed


class FacegenClient:
    """A blocking client of the gateway that re-tries and re-attaches by itself.

    ``target``: the gateway (``host:port`` or any gRPC target naming several
    replicas). ``token``: the bearer token, when the gateway requires one.
    ``tls``: True for TLS with the system's roots, or grpc.ChannelCredentials
    (``tls_credentials(ca=..., cert=..., key=...)`` makes them from PEM files).
    Use it as a context manager, or call ``close()``.
    """

    def __init__(self, target: str, *, token: str | None = None, tls: bool | grpc.ChannelCredentials = False,
                 policy: RetryPolicy | None = None, options: Sequence[tuple[str, Any]] = ()) -> None:
        self.target = target
        self.policy = policy or RetryPolicy()
        creds = credentials(tls)
        opts = channel_options(options)
        self.channel = (grpc.secure_channel(target, creds, options=opts) if creds is not None
                        else grpc.insecure_channel(target, options=opts))
        self.stub = gateway_pb2_grpc.GatewayServiceStub(self.channel)
        self.metadata = auth_metadata(token)

    def __enter__(self) -> FacegenClient:
        return self

    def __exit__(self, kind: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close()

    def close(self) -> None:
        """Closes the channel."""
        self.channel.close()

    def run(self, request: gateway_pb2.JobRequest, *, timeout: float | None = None) -> JobStream:
        """Submits the job and follows it to its end: iterate the stream, then read ``result``.

        The submit carries an idempotency key (the request's, or a new one),
        so a submit whose answer was lost is repeated without making a second
        job. Leaving the stream before its terminal event (an exception,
        Ctrl-C, ``close()``, the end of a ``with`` block) cancels the job.
        ``timeout`` bounds the whole run; when it passes the job is cancelled.
        """
        follower = JobFollower(Retrier.within(self.policy, timeout))
        return JobStream(self, follower, with_key(request))

    def watch(self, job_id: str, after_seq: int = 0, *, timeout: float | None = None) -> JobStream:
        """Follows a job from after ``after_seq`` to its end; leaving early does not cancel it."""
        return JobStream(self, JobFollower(Retrier.within(self.policy, timeout), job_id, after_seq))

    def submit(self, request: gateway_pb2.JobRequest, *, timeout: float | None = None) -> gateway_pb2.SubmitResponse:
        """Submits a job (with an idempotency key, as ``run`` does) and returns its id at once."""
        return self._unary(self.stub.Submit, with_key(request), Retrier.within(self.policy, timeout))

    def get(self, job_id: str, *, timeout: float | None = None) -> gateway_pb2.Job:
        """The job's state, stage, percent, last seq and, once ended, result."""
        return self._unary(self.stub.Get, gateway_pb2.GetRequest(job_id=job_id),
                           Retrier.within(self.policy, timeout), job_id)

    def cancel(self, job_id: str, *, timeout: float | None = None) -> int:
        """Cancels the job everywhere; returns its state after (an ended job keeps its own)."""
        reply = self._unary(self.stub.Cancel, gateway_pb2.CancelRequest(job_id=job_id),
                            Retrier.within(self.policy, timeout), job_id)
        return reply.state

    def list_models(self, *, timeout: float | None = None) -> list[common_pb2.ModelInfo]:
        """The generator's models, with their limits."""
        reply = self._unary(self.stub.ListModels, common_pb2.ListModelsRequest(), Retrier.within(self.policy, timeout))
        return list(reply.models)

    def _unary(self, method: Callable[..., Reply], request: Any, retrier: Retrier, job_id: str | None = None) -> Reply:
        while True:
            try:
                reply = method(request, metadata=self.metadata, timeout=retrier.attempt_timeout())
            except grpc.RpcError as error:
                time.sleep(retrier.unary_delay(error, job_id))
                continue
            retrier.succeeded()
            return reply


class JobStream(StreamView, Iterator[gateway_pb2.JobEvent]):
    """A job's events in order, each exactly once, across broken streams, until the terminal one.

    Iterate it (or call ``wait()``), then read ``result``. ``job_id`` is
    known once the submit answered. Raises GatewayError (JobLostError when
    the gateway forgot the job) when it cannot go on.
    """

    def __init__(self, client: FacegenClient, follower: JobFollower,
                 request: gateway_pb2.JobRequest | None = None) -> None:
        super().__init__(follower, request)
        self._client = client
        self._events = self._follow()

    def __iter__(self) -> JobStream:
        return self

    def __next__(self) -> gateway_pb2.JobEvent:
        return next(self._events)

    def __enter__(self) -> JobStream:
        return self

    def __exit__(self, kind: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close()

    def wait(self) -> gateway_pb2.JobResult:
        """Reads the remaining events and returns the result."""
        for _event in self:
            pass
        return self.result

    def cancel(self) -> int:
        """Cancels the job; the stream then ends with its CANCELLED terminal event."""
        if self.job_id is None:
            raise RuntimeError("the job id is not known yet")
        return self._client.cancel(self.job_id)

    def close(self) -> None:
        """Stops following; for a ``run`` stream that has not ended, cancels the job."""
        self._events.close()

    def _follow(self) -> Generator[gateway_pb2.JobEvent, None, None]:
        follower, client = self._follower, self._client
        try:
            if self._request is not None:
                follower.submitted(client._unary(client.stub.Submit, self._request, follower.retrier).job_id)
                self._request = None
            while not follower.finished:
                call = client.stub.Watch(follower.watch_request(), metadata=client.metadata,
                                         timeout=follower.retrier.remaining())
                broken: grpc.RpcError | None = None
                try:
                    for event in call:
                        if follower.accept(event):
                            yield event
                            if follower.finished:
                                return
                except grpc.RpcError as error:
                    broken = error
                finally:
                    call.cancel()
                time.sleep(follower.reattach_delay(broken))
        except BaseException as stopped:
            if self._owns_job and follower.may_have_live_job(stopped):
                self._abandon()
            raise

    def _abandon(self) -> None:
        """Cancels the job this run owns, once, without raising: the caller is already leaving."""
        client, metadata = self._client, self._client.metadata
        try:
            job_id = self._follower.job_id
            if job_id is None:
                # Interrupted while the submit was in flight: the key finds the job if it was made.
                assert self._request is not None
                job_id = client.stub.Submit(self._request, metadata=metadata, timeout=CANCEL_TIMEOUT).job_id
            client.stub.Cancel(gateway_pb2.CancelRequest(job_id=job_id), metadata=metadata, timeout=CANCEL_TIMEOUT)
            log.info("event=client.cancelled job=%s last_seq=%d", job_id, self._follower.last_seq)
        except (grpc.RpcError, KeyboardInterrupt) as error:
            log.warning("event=client.cancel_failed job=%s error=%s", self._follower.job_id or "-", error)
