"""Builds the gateway's server; used by ``__main__``, the tests and the benchmark."""

from __future__ import annotations

import grpc

from facegen.v1 import gateway_pb2, gateway_pb2_grpc
from services.common.server import ServiceServer
from services.gateway.manager import JobManager
from services.gateway.service import GatewayServicer
from services.gateway.settings import Settings
from services.gateway.upstreams import Upstreams

SERVICE_NAME = gateway_pb2.DESCRIPTOR.services_by_name["GatewayService"].full_name


class GatewayApp:
    """The gateway's server, job manager and upstream channels."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.upstreams = Upstreams(settings)
        self.manager = JobManager(settings, self.upstreams)
        servicer = GatewayServicer(self.manager, self.upstreams, settings.auth_token)

        def register(server: grpc.aio.Server) -> None:
            gateway_pb2_grpc.add_GatewayServiceServicer_to_server(servicer, server)

        self.server = ServiceServer(settings.server, [SERVICE_NAME], register)

    async def start(self) -> int:
        """Starts serving and reports SERVING (upstreams are connected lazily); returns the port."""
        port = await self.server.start()
        await self.server.set_serving(True)
        return port

    async def close(self) -> None:
        """Cancels running jobs and closes the upstream channels (after the server stopped)."""
        await self.manager.shutdown()
        await self.upstreams.close()

    async def stop(self, grace: float | None = 0) -> None:
        """Stops the server (letting streams drain for ``grace`` s), then ``close``."""
        await self.server.stop(grace)
        await self.close()
