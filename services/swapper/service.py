"""The gRPC servicer and the wiring of the swapper's parts (pools, storage, RunPod client)."""

from __future__ import annotations

import asyncio
import logging
from urllib.parse import urlsplit

import grpc

from facegen.v1 import swapper_pb2, swapper_pb2_grpc
from services.common import logs
from services.common.redis import connect
from services.common.secrets import mask
from services.swapper.backoff import Backoff
from services.swapper.blocking import BlockingPool
from services.swapper.bucket import BucketSetup
from services.swapper.embedded_s3 import EmbeddedS3
from services.swapper.endpoints import Endpoint, build_endpoints
from services.swapper.records import SwapRecords
from services.swapper.remote import RemoteSwapper
from services.swapper.runpod import RunPodClient
from services.swapper.s3 import S3Bucket, StorageUnavailable
from services.swapper.settings import Settings
from services.swapper.storage import ObjectStore, Storage
from services.swapper.swap import Swapper

log = logging.getLogger(__name__)

SERVICE_NAME = swapper_pb2.DESCRIPTOR.services_by_name["SwapperService"].full_name
_EMBEDDED_CREDENTIALS = "facegen-embedded"
_LOOPBACK = {"127.0.0.1", "localhost", "::1"}


class SwapperServicer(swapper_pb2_grpc.SwapperServiceServicer):
    """``facegen.v1.SwapperService`` over the ``Swapper`` core."""

    def __init__(self, core: Swapper) -> None:
        self.core = core

    async def PutReference(self, request: swapper_pb2.PutReferenceRequest,
                           context: grpc.aio.ServicerContext) -> swapper_pb2.PutReferenceResponse:
        key, deduplicated = await self.core.put_reference(request.job_id, request.image)
        return swapper_pb2.PutReferenceResponse(key=key, deduplicated=deduplicated)

    async def CheckReference(self, request: swapper_pb2.CheckReferenceRequest,
                             context: grpc.aio.ServicerContext) -> swapper_pb2.CheckReferenceResponse:
        await self.core.check_reference(request.job_id, request.key)
        return swapper_pb2.CheckReferenceResponse()

    async def PutTarget(self, request: swapper_pb2.PutTargetRequest,
                        context: grpc.aio.ServicerContext) -> swapper_pb2.PutTargetResponse:
        key = await self.core.put_target(request.job_id, request.image_index, request.image)
        return swapper_pb2.PutTargetResponse(key=key)

    async def Swap(self, request: swapper_pb2.SwapRequest,
                   context: grpc.aio.ServicerContext) -> None:
        await self.core.swap(request, context.write, context.time_remaining())

    async def CancelSwap(self, request: swapper_pb2.CancelSwapRequest,
                         context: grpc.aio.ServicerContext) -> swapper_pb2.CancelSwapResponse:
        cancelled = await self.core.cancel_swap(request.job_id, request.image_index)
        return swapper_pb2.CancelSwapResponse(remote_cancelled=cancelled)


class SwapperApp:
    """Everything one swapper process runs; ``start`` makes storage ready, ``stop`` releases it all."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.storage_pool = BlockingPool("storage", settings.storage_threads)
        self.embedded: EmbeddedS3 | None = None
        self.storage: Storage | None = None
        self.client: RunPodClient | None = None
        self.endpoints: list[Endpoint] = []
        self.redis = connect(settings.redis, "facegen-swapper") if settings.redis is not None else None
        remote = None
        runpod = settings.runpod
        if runpod.enabled and runpod.api_key:
            self.client = RunPodClient(runpod.api_base, runpod.api_key, max_connections=settings.http_connections)
            self.endpoints = build_endpoints(runpod, redis=self.redis)
            remote = RemoteSwapper(runpod, self.client, self.endpoints, self.storage_pool)
        records = SwapRecords(self.redis, settings.record_grace_s) if self.redis is not None else None
        self.core = Swapper(settings, self.storage_pool, remote, records)
        self.servicer = SwapperServicer(self.core)

    def register(self, server: grpc.aio.Server) -> None:
        """Adds the servicer to a gRPC server."""
        swapper_pb2_grpc.add_SwapperServiceServicer_to_server(self.servicer, server)

    @property
    def store(self) -> ObjectStore | None:
        """The object store once ready."""
        return self.core.store

    def describe(self) -> dict[str, str]:
        """The configuration worth logging at start (secrets masked)."""
        runpod = self.settings.runpod
        host = urlsplit(runpod.api_base).hostname or ""
        if runpod.enabled and not runpod.api_base.startswith("https://") and host not in _LOOPBACK:
            logs.event(log, "runpod.insecure_base", logging.WARNING, api_base=runpod.api_base,
                       hint="the API key travels unencrypted; use https outside loopback")
        return {
            "storage": self.settings.storage.endpoint_url or "embedded",
            "bucket": self.settings.storage.bucket,
            "endpoints": ",".join(runpod.endpoints) or "none (swapping disabled)",
            "api_base": runpod.api_base,
            "api_key": mask(runpod.api_key),
            "long_poll_ms": str(runpod.status_wait_ms),
            "redis": self.settings.redis.display_url if self.settings.redis else "none (no resumable swaps)",
        }

    def build_storage(self) -> Storage:
        """The blocking storage client (starts the embedded server when no endpoint is set)."""
        if self.storage is not None:
            return self.storage
        storage_settings = self.settings.storage
        if storage_settings.embedded:
            host, _, port = storage_settings.embedded_listen.rpartition(":")
            self.embedded = EmbeddedS3(host or "127.0.0.1", int(port or 0)).start()
            logs.event(log, "storage.embedded", url=self.embedded.url,
                       note="in-memory S3 on loopback; objects vanish when the process ends")
            endpoint, key_id, secret = self.embedded.url, _EMBEDDED_CREDENTIALS, _EMBEDDED_CREDENTIALS
        else:
            assert storage_settings.endpoint_url is not None
            endpoint = storage_settings.endpoint_url
            key_id = storage_settings.access_key_id or ""
            secret = storage_settings.secret_access_key or ""
        s3 = S3Bucket(storage_settings, endpoint, key_id, secret, pool_size=self.settings.storage_threads)
        self.storage = Storage(s3)
        return self.storage

    async def start_once(self) -> None:
        """Checks storage once; raises StorageUnavailable with the reason when it is not usable."""
        storage = await self.storage_pool.run(self.build_storage)
        notes = await self.storage_pool.run(BucketSetup(storage.s3).ensure_ready)
        self.core.store = ObjectStore(storage, self.storage_pool)
        logs.event(log, "storage.ready", bucket=storage.bucket, endpoint=storage.endpoint_url,
                   notes="; ".join(notes) or "-")

    async def start(self) -> None:
        """Makes storage ready, retrying with backoff; the service stays NOT_SERVING until then.

        A missing bucket or rejected credentials is logged clearly on every
        attempt instead of crashing the process into a restart loop; fixing
        the bucket makes the service ready without a restart.
        """
        logs.event(log, "swapper.config", logging.INFO, **self.describe())
        backoff = Backoff(base=1.0, factor=2.0, cap=30.0)
        attempt = 0
        while True:
            try:
                await self.start_once()
                return
            except StorageUnavailable as exc:
                self.core.not_ready_reason = str(exc)
                logs.event(log, "storage.not_ready", logging.ERROR, message=str(exc), attempt=attempt + 1)
            await asyncio.sleep(backoff.delay(attempt))
            attempt += 1

    async def stop(self) -> None:
        """Releases threads, connections and the embedded server (after the server drained)."""
        self.core.store = None
        self.core.not_ready_reason = "the swapper is stopping"
        if self.client is not None:
            await self.client.aclose()
        if self.redis is not None:
            await self.redis.aclose()
        await asyncio.to_thread(self.storage_pool.shutdown, True)
        if self.embedded is not None:
            self.embedded.stop()
            self.embedded = None
