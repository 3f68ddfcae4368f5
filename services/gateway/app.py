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
from services.common.server import ServiceServer
from services.common.tls_files import TlsFiles
from services.gateway.auth import Authenticator
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
        self.auth = Authenticator(settings.tokens_file, settings.auth_token)
        servicer = GatewayServicer(self.manager, self.upstreams, self.auth)

        def register(server: grpc.aio.Server) -> None:
            gateway_pb2_grpc.add_GatewayServiceServicer_to_server(servicer, server)

        self.server = ServiceServer(settings, [SERVICE_NAME], register, self.metrics)
        self._health: asyncio.Task[None] | None = None
        self._reload: asyncio.Task[None] | None = None

    def describe(self) -> Mapping[str, object]:
        """Replica, job store, upstreams, limits, TLS to the upstreams; the callers' names or the token masked."""
        settings = self.settings
        return {"instance": settings.instance, "store": settings.store,
                "redis": settings.redis.display_url if settings.redis else "-",
                "generator": settings.generator_address, "swapper": settings.swapper_address,
                "max_running": settings.max_running_jobs, "max_queued": settings.max_queued_jobs,
                "drain_s": settings.drain_seconds, "auth": self.auth.describe(),
                "upstream_tls": _client_mode(settings.upstream_tls)}

    async def prepare(self) -> None:
        """Starts the job manager and waits until the job store answers (NOT_SERVING meanwhile)."""
        if self.auth.tokens_file is not None or self.settings.upstream_tls.enabled:
            self._reload = asyncio.create_task(self._reload_changed_files(), name="gateway-reload")
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

    async def _reload_changed_files(self) -> None:
        """Re-reads the tokens file and the upstream client certificate when they change."""
        while True:
            await asyncio.sleep(self.settings.reload_seconds)
            try:
                await asyncio.to_thread(self.auth.reload_if_changed)
                await self.upstreams.reload_tls()
            except Exception as exc:  # the next round tries again; the files in force stay
                log.exception("event=gateway.reload_failed error=%s", exc)

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
        if self._reload is not None:
            self._reload.cancel()
            self._reload = None
        await self.manager.shutdown()
        await self.upstreams.close()


def _client_mode(files: TlsFiles) -> str:
    """``off``, ``tls`` (the upstreams' certificates checked) or ``mtls`` (a client certificate presented too)."""
    return "off" if not files.enabled else "mtls" if files.cert is not None else "tls"
