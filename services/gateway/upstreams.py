"""Calls to the generator and the swapper, with deadlines and failures the caller can read.

Every call first makes sure the channel is connected (waiting at most the
connect timeout, then UNAVAILABLE with a clear message: the gateway keeps
serving while an upstream is down), then runs with ``wait_for_ready`` and its
own deadline. gRPC errors come back as FacegenError subclasses whose messages
name the upstream, so a job's FAILED event says what went wrong where.
"""

from __future__ import annotations

import asyncio
import logging
import re
import time
from collections.abc import AsyncGenerator
from typing import Any

import grpc
from prometheus_client import CollectorRegistry

from facegen.v1 import (
    common_pb2,
    generator_pb2,
    generator_pb2_grpc,
    swapper_pb2,
    swapper_pb2_grpc,
)
from services.common import logs, tls
from services.common.channel import internal_channel
from services.common.errors import (
    DeadlineExceeded,
    FacegenError,
    FailedPrecondition,
    InvalidInput,
    NotFound,
    ResourceExhausted,
    Unavailable,
)
from services.common.metrics import GrpcClientMetrics
from services.common.observe import ClientObserver
from services.common.tls_files import ChangedWhileRead
from services.common.watched_files import WatchedFiles
from services.gateway.settings import Settings

log = logging.getLogger(__name__)

GENERATOR = "generator"
SWAPPER = "swapper"
LIST_MODELS_TIMEOUT_SECONDS = 15.0
_INCIDENT = re.compile(r"\(incident ([0-9a-f]{6,32})\)")
CANCEL_SWAP_TIMEOUT_SECONDS = 10.0
MAX_DETAILS_CHARS = 500


def _rpc(module: Any, service: str, method: str) -> str:
    """``/facegen.v1.<Service>/<Method>``, as gRPC names the call."""
    return f"/{module.DESCRIPTOR.services_by_name[service].full_name}/{method}"


GENERATE = _rpc(generator_pb2, "GeneratorService", "Generate")
LIST_MODELS = _rpc(generator_pb2, "GeneratorService", "ListModels")
PUT_REFERENCE = _rpc(swapper_pb2, "SwapperService", "PutReference")
PUT_TARGET = _rpc(swapper_pb2, "SwapperService", "PutTarget")
CHECK_REFERENCE = _rpc(swapper_pb2, "SwapperService", "CheckReference")
CANCEL_SWAP = _rpc(swapper_pb2, "SwapperService", "CancelSwap")
SWAP = _rpc(swapper_pb2, "SwapperService", "Swap")

_SAME_CODE: dict[grpc.StatusCode, type[FacegenError]] = {
    grpc.StatusCode.INVALID_ARGUMENT: InvalidInput,
    grpc.StatusCode.NOT_FOUND: NotFound,
    grpc.StatusCode.RESOURCE_EXHAUSTED: ResourceExhausted,
    grpc.StatusCode.FAILED_PRECONDITION: FailedPrecondition,
    grpc.StatusCode.UNAVAILABLE: Unavailable,
}


async def _close_channels(channels: tuple[grpc.aio.Channel, ...], grace: float) -> None:
    """Closes ``channels`` once their calls end, cancelling what still runs after ``grace`` seconds."""
    try:
        await asyncio.gather(*(channel.close(grace) for channel in channels))
    except asyncio.CancelledError:
        await asyncio.gather(*(channel.close() for channel in channels))
        raise


class UpstreamFailed(FacegenError):
    """An upstream failed in a way it does not explain to callers (INTERNAL, UNKNOWN, ...)."""


def translate(exc: grpc.aio.AioRpcError, upstream: str, timeout: float, started: float,
              timeout_setting: str) -> FacegenError:
    """The FacegenError to raise for a failed call to ``upstream``."""
    code = exc.code()
    details = (exc.details() or "").strip()[:MAX_DETAILS_CHARS]
    if code == grpc.StatusCode.DEADLINE_EXCEEDED:
        if time.monotonic() - started >= timeout * 0.95:
            return DeadlineExceeded(
                f"the {upstream} did not finish within {timeout:g} s ({timeout_setting})")
        return DeadlineExceeded(f"{upstream}: {details or 'deadline exceeded'}")
    if code == grpc.StatusCode.CANCELLED:
        return Unavailable(f"the {upstream} ended the call early (cancelled); retry later")
    kind = _SAME_CODE.get(code)
    if kind is not None:
        return kind(f"{upstream}: {details or code.name.lower()}")
    # The upstream's incident id leads to its log line; nothing else of its message is passed on.
    incident = _INCIDENT.search(details)
    where = f", incident {incident.group(1)}" if incident else ""
    return UpstreamFailed(f"the {upstream} failed ({code.name}{where}); the details are in its logs")


class Upstreams:
    """Channels and stubs for the generator and the swapper (TLS with ``GATEWAY_UPSTREAM_TLS_*``)."""

    def __init__(self, settings: Settings, metrics: GrpcClientMetrics | None = None) -> None:
        self._settings = settings
        self._observer = ClientObserver(metrics or GrpcClientMetrics(CollectorRegistry()))
        tls_files = settings.upstream_tls
        self._certificates = WatchedFiles(*tls_files.paths) if tls_files.enabled else None
        self._retiring: set[asyncio.Task[None]] = set()
        self._open(tls.channel_credentials(tls_files))

    def _open(self, credentials: grpc.ChannelCredentials | None) -> None:
        limit = self._settings.max_message_bytes
        self._generator_channel = internal_channel(self._settings.generator_address, limit, credentials)
        self._swapper_channel = internal_channel(self._settings.swapper_address, limit, credentials)
        self._generator = generator_pb2_grpc.GeneratorServiceStub(self._generator_channel)
        self._swapper = swapper_pb2_grpc.SwapperServiceStub(self._swapper_channel)

    async def reload_tls(self) -> bool:
        """New channels when the client certificate's files changed; True when they were replaced.

        Calls already made go on, on the old channels, which close once those
        calls end (at most the longest call deadline). Files that do not load
        keep the channels as they are, with one ERROR line.
        """
        if self._certificates is None or not await asyncio.to_thread(self._certificates.changed):
            return False
        try:
            credentials = await asyncio.to_thread(tls.channel_credentials, self._settings.upstream_tls)
        except ChangedWhileRead:
            self._certificates.forget()
            return False
        except ValueError as exc:
            logs.event(log, "gateway.upstream_tls_rejected", logging.ERROR, error=exc, kept="the previous certificate")
            return False
        old = (self._generator_channel, self._swapper_channel)
        self._open(credentials)
        settings = self._settings
        grace = max(settings.generate_timeout_seconds, settings.swap_timeout_seconds, settings.upload_timeout_seconds)
        retiring = asyncio.create_task(_close_channels(old, grace), name="gateway-retire-channels")
        self._retiring.add(retiring)
        retiring.add_done_callback(self._retiring.discard)
        logs.event(log, "gateway.upstream_tls_reloaded", cert=settings.upstream_tls_cert_file or "-")
        return True

    async def close(self) -> None:
        """Closes the channels (in-flight calls are cancelled), those being retired included."""
        for retiring in list(self._retiring):
            retiring.cancel()
        await asyncio.gather(*self._retiring, return_exceptions=True)
        await self._generator_channel.close()
        await self._swapper_channel.close()

    async def _connected(self, channel: grpc.aio.Channel, upstream: str) -> None:
        if channel.get_state(try_to_connect=True) == grpc.ChannelConnectivity.READY:
            return
        timeout = self._settings.connect_timeout_seconds
        try:
            async with asyncio.timeout(timeout):
                await channel.channel_ready()
        except TimeoutError:
            raise Unavailable(
                f"the {upstream} cannot be reached (no connection within {timeout:g} s); retry later"
            ) from None

    def generate(self, request: generator_pb2.GenerateRequest) -> AsyncGenerator[generator_pb2.GenerateEvent]:
        """Streams the generator's events; cancelling the consumer cancels the call."""
        return self._stream(self._generator_channel, GENERATOR, self._generator.Generate, GENERATE, request,
                            self._settings.generate_timeout_seconds, "GATEWAY_GENERATE_TIMEOUT_SECONDS")

    async def put_reference(self, job_id: str, image: bytes) -> str:
        """Stores the reference face; returns its storage key."""
        request = swapper_pb2.PutReferenceRequest(job_id=job_id, image=image)
        response = await self._unary(self._swapper_channel, SWAPPER, self._swapper.PutReference, PUT_REFERENCE,
                                     request,
                                     self._settings.upload_timeout_seconds, "GATEWAY_UPLOAD_TIMEOUT_SECONDS")
        return str(response.key)

    async def put_target(self, job_id: str, index: int, image: bytes) -> str:
        """Stores a job's target image for a later Swap; returns its temporary storage key."""
        request = swapper_pb2.PutTargetRequest(job_id=job_id, image_index=index, image=image)
        response = await self._unary(self._swapper_channel, SWAPPER, self._swapper.PutTarget, PUT_TARGET, request,
                                     self._settings.upload_timeout_seconds, "GATEWAY_UPLOAD_TIMEOUT_SECONDS")
        return str(response.key)

    async def check_reference(self, job_id: str, key: str) -> None:
        """InvalidInput for a malformed reference key, NotFound for one that is not stored."""
        request = swapper_pb2.CheckReferenceRequest(job_id=job_id, key=key)
        await self._unary(self._swapper_channel, SWAPPER, self._swapper.CheckReference, CHECK_REFERENCE, request,
                          self._settings.upload_timeout_seconds, "GATEWAY_UPLOAD_TIMEOUT_SECONDS")

    async def cancel_swap(self, job_id: str, index: int) -> bool:
        """Ends a resumable swap that nobody follows; True when a remote job was cancelled."""
        request = swapper_pb2.CancelSwapRequest(job_id=job_id, image_index=index)
        response = await self._unary(self._swapper_channel, SWAPPER, self._swapper.CancelSwap, CANCEL_SWAP, request,
                                     CANCEL_SWAP_TIMEOUT_SECONDS, "a fixed limit")
        return bool(response.remote_cancelled)

    def swap(self, request: swapper_pb2.SwapRequest) -> AsyncGenerator[swapper_pb2.SwapEvent]:
        """Streams the swapper's events for one image; cancelling the consumer cancels the call."""
        return self._stream(self._swapper_channel, SWAPPER, self._swapper.Swap, SWAP, request,
                            self._settings.swap_timeout_seconds, "GATEWAY_SWAP_TIMEOUT_SECONDS")

    async def _stream(self, channel: grpc.aio.Channel, upstream: str, method: Any, rpc: str, request: Any,
                      deadline_s: float, setting: str) -> AsyncGenerator[Any]:
        """One server-streaming call with its deadline; errors translated, the call cancelled on exit."""
        await self._connected(channel, upstream)
        started = time.monotonic()
        with self._observer.observe(rpc, "server_stream") as observed:
            call = method(request, timeout=deadline_s, wait_for_ready=True, metadata=observed.metadata)
            try:
                async for event in call:
                    yield event
            except grpc.aio.AioRpcError as exc:
                observed.code = exc.code()
                raise translate(exc, upstream, deadline_s, started, setting) from None
            finally:
                call.cancel()

    async def list_models(self) -> common_pb2.ListModelsResponse:
        """The generator's model catalog."""
        response: common_pb2.ListModelsResponse = await self._unary(
            self._generator_channel, GENERATOR, self._generator.ListModels, LIST_MODELS,
            common_pb2.ListModelsRequest(), LIST_MODELS_TIMEOUT_SECONDS, "a fixed limit")
        return response

    async def _unary(self, channel: grpc.aio.Channel, upstream: str, method: Any, rpc: str, request: Any,
                     deadline_s: float, setting: str) -> Any:
        """One unary call with its deadline; errors translated."""
        await self._connected(channel, upstream)
        started = time.monotonic()
        with self._observer.observe(rpc, "unary") as observed:
            try:
                return await method(request, timeout=deadline_s, wait_for_ready=True, metadata=observed.metadata)
            except grpc.aio.AioRpcError as exc:
                observed.code = exc.code()
                raise translate(exc, upstream, deadline_s, started, setting) from None
