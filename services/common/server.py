"""The aio gRPC server bootstrap every service uses.

It adds what every service needs and none should write again: the error
interceptor, ``grpc.health.v1`` (NOT_SERVING until the service says it is
ready, NOT_SERVING again as soon as shutdown starts), server reflection (v1 and v1alpha),
message size limits that fit the largest allowed image, and a graceful stop
on SIGTERM/SIGINT that lets in-flight streams drain for a grace period.
"""

from __future__ import annotations

import asyncio
import logging
import signal
from collections.abc import Awaitable, Callable, Iterable

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_health.v1.health import aio as health_aio

from services.common import logs
from services.common.config import ServerSettings
from services.common.interceptor import ErrorMappingInterceptor
from services.common.reflection import enable_reflection

log = logging.getLogger(__name__)

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
                 register: Callable[[grpc.aio.Server], None]) -> None:
        self.settings = settings
        self.service_names = tuple(service_names)
        self.health = health_aio.HealthServicer()
        self.server = grpc.aio.server(
            interceptors=[ErrorMappingInterceptor()],
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

    async def start(self) -> int:
        """Binds the listen address, starts serving (health NOT_SERVING), returns the port."""
        await self.set_serving(False)
        self.port = self.server.add_insecure_port(self.settings.listen)
        if self.port == 0:
            raise OSError(f"cannot listen on {self.settings.listen}")
        await self.server.start()
        return self.port

    async def set_serving(self, serving: bool) -> None:
        """Reports the overall and per-service health status."""
        status = SERVING if serving else NOT_SERVING
        for name in ("", *self.service_names):
            await self.health.set(name, status)

    async def stop(self, grace: float | None = None) -> None:
        """Reports NOT_SERVING, refuses new calls, and lets in-flight calls drain for ``grace`` s."""
        await self.health.enter_graceful_shutdown()
        await self.server.stop(self.settings.grace_seconds if grace is None else grace)


async def run_until_signal(server: ServiceServer, name: str,
                           on_start: Callable[[], Awaitable[None]],
                           on_stop: Callable[[], Awaitable[None]] | None = None,
                           on_drain: Callable[[], Awaitable[None]] | None = None) -> None:
    """Starts ``server``, runs ``on_start`` (loading, warm-up) then reports SERVING;
    on SIGTERM or SIGINT reports NOT_SERVING, runs ``on_drain`` (work in
    progress finishes or is handed over), then stops the server and runs ``on_stop``.

    When ``on_start`` fails the process keeps running and reports NOT_SERVING,
    so an orchestrator sees an unhealthy service with a clear log line instead
    of a crash loop.
    """
    port = await server.start()
    logs.event(log, "server.listening", service=name, address=server.settings.listen, port=port)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)

    async def start_up() -> None:
        try:
            await on_start()
        except Exception as exc:
            log.error("event=server.start_failed service=%s error=%s", name, exc,
                      exc_info=not isinstance(exc, (OSError, ValueError)))
            return
        await server.set_serving(True)
        logs.event(log, "server.serving", service=name, port=port)

    starter = asyncio.create_task(start_up())
    await stop.wait()
    logs.event(log, "server.stopping", service=name, grace_s=server.settings.grace_seconds)
    starter.cancel()
    if on_drain is not None:
        await server.set_serving(False)
        await on_drain()
    await server.stop()
    if on_stop is not None:
        await on_stop()
    logs.event(log, "server.stopped", service=name)
