"""The swapper's parts and life cycle: thread pool, storage, RunPod client, Redis, gRPC server
(services.common.app)."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Mapping
from urllib.parse import urlsplit

import grpc

from facegen.v1 import swapper_pb2, swapper_pb2_grpc
from services.common import logs, tracing
from services.common.app import ServiceApp
from services.common.redis import connect
from services.common.secrets import mask
from services.common.server import ServiceServer
from services.swapper.backoff import Backoff
from services.swapper.blocking import BlockingPool
from services.swapper.bucket import BucketSetup
from services.swapper.endpoints import Endpoint, build_endpoints
from services.swapper.identity import IdentityCheck
from services.swapper.instrumentation import instrument_storage
from services.swapper.metrics import SwapperMetrics
from services.swapper.objects import ObjectClient
from services.swapper.records import SwapRecords
from services.swapper.remote import RemoteSwapper
from services.swapper.runpod import RunPodClient
from services.swapper.s3 import S3Bucket, StorageUnavailable
from services.swapper.service import SwapperServicer
from services.swapper.settings import Settings
from services.swapper.storage import ObjectStore, Storage
from services.swapper.swap import Swapper
from services.swapper.verify import ResultChecks

log = logging.getLogger(__name__)

SERVICE_NAME = swapper_pb2.DESCRIPTOR.services_by_name["SwapperService"].full_name
_LOOPBACK = {"127.0.0.1", "localhost", "::1"}


class SwapperApp(ServiceApp):
    """Everything one swapper process runs; ``prepare`` makes storage ready, ``close`` releases it all."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.metrics = metrics = SwapperMetrics()
        self.storage_pool = BlockingPool("storage", settings.storage_threads,
                                         metrics.blocking_in_flight.labels(pool="storage"))
        self.storage: Storage | None = None
        self.client: RunPodClient | None = None
        self.endpoints: list[Endpoint] = []
        self.redis = connect(settings.redis, "facegen-swapper") if settings.redis is not None else None
        remote = None
        runpod = settings.runpod
        if runpod.enabled and runpod.api_key is not None:
            self.client = RunPodClient(runpod.api_base, runpod.api_key.get_secret_value(),
                                       max_connections=settings.http_connections, metrics=metrics)
            self.endpoints = build_endpoints(runpod, redis=self.redis, metrics=metrics)
            remote = RemoteSwapper(runpod, self.client, self.endpoints, self.storage_pool)
        records = SwapRecords(self.redis, settings.record_grace_s) if self.redis is not None else None
        self.identity = IdentityCheck(settings.checks.identity_processes) if settings.checks.identity else None
        checks = ResultChecks(settings.checks, self.storage_pool, self.identity)
        self.core = Swapper(settings, self.storage_pool, remote, records, checks=checks)
        metrics.swaps_in_flight.set_function(lambda: self.core.in_flight)
        # boto3's S3 calls (bucket setup, deletes) as spans under the call that makes them (botocore is patched
        # process-wide); the object requests make their own (objects.py).
        self._uninstrument = instrument_storage() if tracing.enabled() else None
        servicer = SwapperServicer(self.core)

        def register(server: grpc.aio.Server) -> None:
            swapper_pb2_grpc.add_SwapperServiceServicer_to_server(servicer, server)

        self.server = ServiceServer(settings, [SERVICE_NAME], register, metrics)

    @property
    def store(self) -> ObjectStore | None:
        """The object store once ready."""
        return self.core.store

    def describe(self) -> Mapping[str, object]:
        """Storage, endpoints and Redis, the API key masked; warns about a key sent in the clear."""
        runpod = self.settings.runpod
        host = urlsplit(runpod.api_base).hostname or ""
        if runpod.enabled and not runpod.api_base.startswith("https://") and host not in _LOOPBACK:
            logs.event(log, "runpod.insecure_base", logging.WARNING, api_base=runpod.api_base,
                       hint="the API key travels unencrypted; use https outside loopback")
        return {
            "storage": self.settings.storage.endpoint,
            "bucket": self.settings.storage.bucket,
            "endpoints": ",".join(runpod.endpoints) or "none (swapping disabled)",
            "api_base": runpod.api_base,
            "api_key": mask(runpod.api_key),
            "long_poll_ms": runpod.status_wait_ms,
            "redis": self.settings.redis.display_url if self.settings.redis else "none (no resumable swaps)",
            "verify": self.settings.checks.verify,
        }

    def build_storage(self) -> Storage:
        """The storage clients (blocking: boto3 builds its client); the object requests' session opens on first
        use."""
        if self.storage is None:
            settings = self.settings.storage
            objects = ObjectClient(settings, self.storage_pool, settings.max_connections)
            self.storage = Storage(S3Bucket(settings, pool_size=self.settings.storage_threads), objects, self.metrics)
        return self.storage

    async def prepare_once(self) -> None:
        """Checks storage once; raises StorageUnavailable with the reason when it is not usable."""
        storage = await self.storage_pool.run(self.build_storage)
        notes = await self.storage_pool.run(BucketSetup(storage.s3).ensure_ready)
        self.core.store = ObjectStore(storage, self.storage_pool)
        logs.event(log, "storage.ready", bucket=storage.bucket, endpoint=storage.endpoint_url,
                   notes="; ".join(notes) or "-")

    async def prepare(self) -> None:
        """Loads the identity check's models (when it runs), then makes storage ready, retrying with backoff;
        the service stays NOT_SERVING until then.

        A missing bucket or rejected credentials is logged clearly on every
        attempt instead of crashing the process into a restart loop; fixing
        the bucket makes the service ready without a restart.
        """
        if self.identity is not None:
            # The models load before traffic comes; a failure leaves the swapper NOT_SERVING, saying why.
            await self.identity.start()
            logs.event(log, "identity.ready", processes=self.identity.processes,
                       threshold=self.settings.checks.identity_threshold)
        backoff = Backoff(base=1.0, factor=2.0, cap=30.0)
        attempt = 0
        while True:
            try:
                await self.prepare_once()
                return
            except StorageUnavailable as exc:
                self.core.not_ready_reason = str(exc)
                logs.event(log, "storage.not_ready", logging.ERROR, message=str(exc), attempt=attempt + 1)
            await asyncio.sleep(backoff.delay(attempt))
            attempt += 1

    async def close(self) -> None:
        """Releases threads and connections (after the server drained)."""
        self.core.store = None
        self.core.not_ready_reason = "the swapper is stopping"
        if self.client is not None:
            await self.client.aclose()
        if self.storage is not None:
            await self.storage.objects.aclose()
        if self.redis is not None:
            await self.redis.aclose()
        await asyncio.to_thread(self.storage_pool.shutdown, True)
        if self._uninstrument is not None:
            self._uninstrument()
        if self.identity is not None:
            await asyncio.to_thread(self.identity.close)

