"""The asyncio client: ``AsyncFacegenClient`` and the ``AsyncJobStream`` it returns for run and watch.

It behaves as the blocking client (``services.client.sync``) does; cancelling
the task that reads a run stream cancels the job.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncGenerator, AsyncIterator, Awaitable, Callable, Sequence
from types import TracebackType
from typing import Any, TypeVar

import grpc

from facegen.v1 import common_pb2, gateway_pb2, gateway_pb2_grpc
from services.client.channel import auth_metadata, channel_options, credentials
from services.client.resume import JobFollower, StreamView
from services.client.retry import Retrier, RetryPolicy
from services.client.sync import CANCEL_TIMEOUT, with_key

log = logging.getLogger(__name__)

Reply = TypeVar("Reply")


class AsyncFacegenClient:
    """An asyncio client of the gateway that re-tries and re-attaches by itself.

    Same arguments as FacegenClient; create it inside a running event loop
    and use it with ``async with`` (or ``await client.close()``).
    """

    def __init__(self, target: str, *, token: str | None = None, tls: bool | grpc.ChannelCredentials = False,
                 policy: RetryPolicy | None = None, options: Sequence[tuple[str, Any]] = ()) -> None:
        self.target = target
        self.policy = policy or RetryPolicy()
        creds = credentials(tls)
        opts = channel_options(options)
        self.channel = (grpc.aio.secure_channel(target, creds, options=opts) if creds is not None
                        else grpc.aio.insecure_channel(target, options=opts))
        self.stub = gateway_pb2_grpc.GatewayServiceStub(self.channel)
        self.metadata = auth_metadata(token)

    async def __aenter__(self) -> AsyncFacegenClient:
        return self

    async def __aexit__(self, kind: type[BaseException] | None, exc: BaseException | None,
                        tb: TracebackType | None) -> None:
        await self.close()

    async def close(self) -> None:
        """Closes the channel."""
        await self.channel.close()

    def run(self, request: gateway_pb2.JobRequest, *, timeout: float | None = None) -> AsyncJobStream:
        """Submits the job and follows it to its end (see FacegenClient.run); cancelling the reader cancels it."""
        return AsyncJobStream(self, JobFollower(Retrier.within(self.policy, timeout)), with_key(request))

    def watch(self, job_id: str, after_seq: int = 0, *, timeout: float | None = None) -> AsyncJobStream:
        """Follows a job from after ``after_seq`` to its end; leaving early does not cancel it."""
        return AsyncJobStream(self, JobFollower(Retrier.within(self.policy, timeout), job_id, after_seq))

    # The unary calls take no timeout argument: wrap them in ``asyncio.timeout()``. Each attempt is
    # bounded by the policy's call_timeout, and the retries by its outage budget.

    async def submit(self, request: gateway_pb2.JobRequest) -> gateway_pb2.SubmitResponse:
        """Submits a job (with an idempotency key, as ``run`` does) and returns its id at once."""
        return await self._unary(self.stub.Submit, with_key(request), Retrier(self.policy))

    async def get(self, job_id: str) -> gateway_pb2.Job:
        """The job's state, stage, percent, last seq and, once ended, result."""
        return await self._unary(self.stub.Get, gateway_pb2.GetRequest(job_id=job_id), Retrier(self.policy), job_id)

    async def cancel(self, job_id: str) -> int:
        """Cancels the job everywhere; returns its state after (an ended job keeps its own)."""
        reply = await self._unary(self.stub.Cancel, gateway_pb2.CancelRequest(job_id=job_id),
                                  Retrier(self.policy), job_id)
        return reply.state

    async def list_models(self) -> list[common_pb2.ModelInfo]:
        """The generator's models, with their limits."""
        reply = await self._unary(self.stub.ListModels, common_pb2.ListModelsRequest(), Retrier(self.policy))
        return list(reply.models)

    async def _unary(self, method: Callable[..., Awaitable[Reply]], request: Any, retrier: Retrier,
                     job_id: str | None = None) -> Reply:
        while True:
            try:
                reply = await method(request, metadata=self.metadata, timeout=retrier.attempt_timeout())
            except grpc.RpcError as error:
                await asyncio.sleep(retrier.unary_delay(error, job_id))
                continue
            retrier.succeeded()
            return reply


class AsyncJobStream(StreamView, AsyncIterator[gateway_pb2.JobEvent]):
    """A job's events in order, each exactly once, across broken streams, until the terminal one.

    ``async for`` over it (or ``await wait()``), then read ``result``.
    """

    def __init__(self, client: AsyncFacegenClient, follower: JobFollower,
                 request: gateway_pb2.JobRequest | None = None) -> None:
        super().__init__(follower, request)
        self._client = client
        self._events = self._follow()

    def __aiter__(self) -> AsyncJobStream:
        return self

    async def __anext__(self) -> gateway_pb2.JobEvent:
        return await anext(self._events)

    async def __aenter__(self) -> AsyncJobStream:
        return self

    async def __aexit__(self, kind: type[BaseException] | None, exc: BaseException | None,
                        tb: TracebackType | None) -> None:
        await self.aclose()

    async def wait(self) -> gateway_pb2.JobResult:
        """Reads the remaining events and returns the result."""
        async for _event in self:
            pass
        return self.result

    async def cancel(self) -> int:
        """Cancels the job; the stream then ends with its CANCELLED terminal event."""
        if self.job_id is None:
            raise RuntimeError("the job id is not known yet")
        return await self._client.cancel(self.job_id)

    async def aclose(self) -> None:
        """Stops following; for a ``run`` stream that has not ended, cancels the job."""
        await self._events.aclose()

    async def _follow(self) -> AsyncGenerator[gateway_pb2.JobEvent, None]:
        follower, client = self._follower, self._client
        try:
            if self._request is not None:
                reply = await client._unary(client.stub.Submit, self._request, follower.retrier)
                follower.submitted(reply.job_id)
                self._request = None
            while not follower.finished:
                call = client.stub.Watch(follower.watch_request(), metadata=client.metadata,
                                         timeout=follower.retrier.remaining())
                broken: grpc.RpcError | None = None
                try:
                    async for event in call:
                        if follower.accept(event):
                            yield event
                            if follower.finished:
                                return
                except grpc.RpcError as error:
                    broken = error
                finally:
                    call.cancel()
                await asyncio.sleep(follower.reattach_delay(broken))
        except BaseException as stopped:
            if self._owns_job and follower.may_have_live_job(stopped):
                await self._abandon()
            raise

    async def _abandon(self) -> None:
        """Cancels the job this run owns, once, without raising: the caller is already leaving."""
        client, metadata = self._client, self._client.metadata
        try:
            job_id = self._follower.job_id
            if job_id is None:
                # Cancelled while the submit was in flight: the key finds the job if it was made.
                assert self._request is not None
                job_id = (await client.stub.Submit(self._request, metadata=metadata, timeout=CANCEL_TIMEOUT)).job_id
            await client.stub.Cancel(gateway_pb2.CancelRequest(job_id=job_id), metadata=metadata,
                                     timeout=CANCEL_TIMEOUT)
            log.info("event=client.cancelled job=%s last_seq=%d", job_id, self._follower.last_seq)
        except (grpc.RpcError, asyncio.CancelledError) as error:
            log.warning("event=client.cancel_failed job=%s error=%s", self._follower.job_id or "-", error)
