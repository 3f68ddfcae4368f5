"""The gateway's parts and life cycle: job manager, upstream channels, gRPC server (services.common.app)."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Mapping

import grpc

from facegen.v1 import gateway_pb2, gateway_pb2_grpc
from services.common import logs
from services.common.app import ServiceApp
from services.common.secrets import mask
from services.common.server import ServiceServer
from services.gateway.manager import JobManager
from services.gateway.metrics import GatewayMetrics
from services.gateway.service import GatewayServicer
from services.gateway.settings import Settings
from services.gateway.store import StoreUnavailable
from services.gateway.upstreams import Upstreams

log = logging.getLogger(__name__)

SERVICE_NAME = gateway_pb2.DESCRIPTOR.services_by_name["GatewayService"].full_name
# How often the gateway looks at its job store's health to report it.
HEALTH_POLL_SECONDS = 0.5
# The queue depth gauge is read from the store every this many health polls (2 s).
QUEUE_DEPTH_POLLS = 4


class GatewayApp(ServiceApp):
    """The gateway's server, job manager and upstream channels."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.metrics = GatewayMetrics()
        self.upstreams = Upstreams(settings, self.metrics.grpc_client)
        self.manager = JobManager(settings, self.upstreams, metrics=self.metrics)
        self.metrics.running_jobs.set_function(lambda: self.manager.active_jobs)
        servicer = GatewayServicer(self.manager, self.upstreams, settings.auth_token)

        def register(server: grpc.aio.Server) -> None:
            gateway_pb2_grpc.add_GatewayServiceServicer_to_server(servicer, server)

        self.server = ServiceServer(settings, [SERVICE_NAME], register, self.metrics)
        self._health: asyncio.Task[None] | None = None

    def describe(self) -> Mapping[str, object]:
        """Replica, job store, upstreams, limits; the token masked."""
        settings = self.settings
        return {"instance": settings.instance, "store": settings.store,
                "redis": settings.redis.display_url if settings.redis else "-",
                "generator": settings.generator_address, "swapper": settings.swapper_address,
                "max_running": settings.max_running_jobs, "max_queued": settings.max_queued_jobs,
                "drain_s": settings.drain_seconds, "auth": mask(settings.auth_token)}

    async def prepare(self) -> None:
        """Starts the job manager and waits until the job store answers (NOT_SERVING meanwhile)."""
        await self.manager.start()
        waited = False
        while not self.manager.job_store_healthy:
            if not waited:
                logs.event(log, "gateway.waiting_for_store", logging.WARNING, store=self.settings.store)
                waited = True
            await asyncio.sleep(HEALTH_POLL_SECONDS)
        self._health = asyncio.create_task(self._report_store_health(), name="gateway-health")

    async def _report_store_health(self) -> None:
        """NOT_SERVING while the job store cannot be reached, so new work goes to other replicas;
        refreshes the queue depth gauge meanwhile."""
        serving = True
        polls = 0
        while True:
            await asyncio.sleep(HEALTH_POLL_SECONDS)
            polls += 1
            if polls % QUEUE_DEPTH_POLLS == 1:
                with contextlib.suppress(StoreUnavailable):
                    self.metrics.queue_depth.set(await self.manager.store.queue_depth())
            healthy = self.manager.job_store_healthy
            if healthy != serving:
                serving = healthy
                logs.event(log, "gateway.store_health", logging.INFO if healthy else logging.WARNING,
                           healthy=healthy)
                await self.server.set_serving(healthy)

    async def drain(self) -> None:
        """SIGTERM, after NOT_SERVING: lets running jobs go on, then hands over or cancels the rest."""
        self._stop_health()
        await self.manager.drain()

    def _stop_health(self) -> None:
        if self._health is not None:
            self._health.cancel()
            self._health = None

    async def close(self) -> None:
        """Stops the jobs still running here and closes the upstream channels (after the server stopped)."""
        self._stop_health()
        await self.manager.shutdown()
        await self.upstreams.close()
