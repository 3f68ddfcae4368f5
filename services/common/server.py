"""The aio gRPC server bootstrap every service uses.

It adds what every service needs and none should write again: the error
interceptor, metrics and traces of every call (``observe.py``) and the
``/metrics`` endpoint (on ``<SERVICE>_METRICS_LISTEN``), ``grpc.health.v1`` (NOT_SERVING until the service says it is
ready, NOT_SERVING again as soon as shutdown starts), server reflection (v1 and v1alpha),
message size limits that fit the largest allowed image, and a graceful stop
that lets in-flight streams drain for a grace period. ``services.common.app``
runs it for each service.

With TLS files set (``services.common.tls``) the port serves TLS, or mTLS with
a CA. ``health_listen`` adds a plaintext port that serves the same health
status and nothing else, for probes that cannot present a client certificate.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Iterable

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_health.v1.health import aio as health_aio

from services.common.config import ServerSettings
from services.common.interceptor import ErrorMappingInterceptor
from services.common.metrics import MetricsEndpoint, ServiceMetrics
from services.common.observe import ObservingInterceptor
from services.common.reflection import enable_reflection
from services.common.tls import server_credentials

SERVING = health_pb2.HealthCheckResponse.SERVING
MAX_CONNECTION_AGE_MS = 300_000
NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING


def message_size_options(max_bytes: int) -> list[tuple[str, int]]:
    """Channel/server options raising both message size limits to ``max_bytes``."""
    return [
        ("grpc.max_send_message_length", max_bytes),
        ("grpc.max_receive_message_length", max_bytes),
    ]


class ServiceServer:
    """A started-or-not aio server for one or more services, with health and reflection."""

    def __init__(self, settings: ServerSettings, service_names: Iterable[str],
                 register: Callable[[grpc.aio.Server], None], metrics: ServiceMetrics | None = None) -> None:
        self.settings = settings
        self.service_names = tuple(service_names)
        self.health = health_aio.HealthServicer()
        self.metrics = metrics or ServiceMetrics()
        self.metrics_endpoint = MetricsEndpoint(self.metrics.registry, settings.metrics_listen)
        self.server = grpc.aio.server(
            # Observing first: it sees the status the error interceptor gives every outcome.
            interceptors=[ObservingInterceptor(self.metrics.grpc_server), ErrorMappingInterceptor()],
            options=[
                *message_size_options(settings.max_message_bytes),
                ("grpc.so_reuseport", 0),
                ("grpc.keepalive_permit_without_calls", 1),
                ("grpc.http2.min_ping_interval_without_data_ms", 10_000),
                # Clients reconnect (and re-resolve DNS) every few minutes, so replicas added by a
                # scale-out get calls too; streams already open go on until they end.
                ("grpc.max_connection_age_ms", MAX_CONNECTION_AGE_MS),
            ],
        )
        register(self.server)
        health_pb2_grpc.add_HealthServicer_to_server(self.health, self.server)
        enable_reflection(
            (*self.service_names, health_pb2.DESCRIPTOR.services_by_name["Health"].full_name),
            self.server)
        self.port = 0
        self.health_server: grpc.aio.Server | None = None
        self.health_port = 0

    async def start(self) -> int:
        """Binds the listen address (TLS when configured), starts serving (health NOT_SERVING), returns the port."""
        await self.set_serving(False)
        credentials = server_credentials(self.settings.tls)
        self.port = (self.server.add_secure_port(self.settings.listen, credentials) if credentials is not None
                     else self.server.add_insecure_port(self.settings.listen))
        if self.port == 0:
            raise OSError(f"cannot listen on {self.settings.listen}")
        if self.settings.health_listen:
            self.health_port = await self._start_health_server(self.settings.health_listen)
        await self.server.start()
        self.metrics_endpoint.start()
        return self.port

    async def _start_health_server(self, listen: str) -> int:
        """A plaintext server on ``listen`` with the same health servicer and nothing else."""
        self.health_server = grpc.aio.server(interceptors=[ErrorMappingInterceptor()],
                                             options=[("grpc.so_reuseport", 0)])
        health_pb2_grpc.add_HealthServicer_to_server(self.health, self.health_server)
        port = self.health_server.add_insecure_port(listen)
        if port == 0:
            raise OSError(f"cannot listen on {listen} (the health port)")
        await self.health_server.start()
        return port

    async def set_serving(self, serving: bool) -> None:
        """Reports the overall and per-service health status."""
        status = SERVING if serving else NOT_SERVING
        for name in ("", *self.service_names):
            await self.health.set(name, status)

    async def stop(self, grace: float | None = None) -> None:
        """Reports NOT_SERVING, refuses new calls, and lets in-flight calls drain for ``grace`` s."""
        await self.health.enter_graceful_shutdown()
        await self.server.stop(self.settings.grace_seconds if grace is None else grace)
        if self.health_server is not None:
            await self.health_server.stop(0)
        # Last: the final counts stay readable while calls drain.
        await asyncio.to_thread(self.metrics_endpoint.stop)
