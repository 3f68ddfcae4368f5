"""The generator's parts and life cycle: catalog → device → engine → gRPC server (services.common.app)."""

from __future__ import annotations

from collections.abc import Mapping

import grpc

from facegen.v1 import generator_pb2, generator_pb2_grpc
from services.common.app import ServiceApp
from services.common.server import ServiceServer
from services.generator.catalog import load_catalog
from services.generator.device import resolve_device, use_torch_threads
from services.generator.engine import Engine
from services.generator.metrics import GeneratorMetrics
from services.generator.pipelines import quiet_libraries
from services.generator.service import GeneratorServicer
from services.generator.settings import Settings

SERVICE_NAME = generator_pb2.DESCRIPTOR.services_by_name["GeneratorService"].full_name


class GeneratorApp(ServiceApp):
    """The engine and the server in front of it; ``prepare`` loads and warms the default model."""

    def __init__(self, settings: Settings) -> None:
        """Reads the catalog and picks the device (ConfigError when either is wrong); loads no model yet."""
        self.settings = settings
        quiet_libraries()
        self.catalog = load_catalog(settings.catalog_path, settings.models_dir)
        self.device = resolve_device(settings.device)
        use_torch_threads(settings.torch_threads, self.device)
        self.metrics = GeneratorMetrics()
        self.engine = Engine(settings, self.catalog, self.device, self.metrics)
        servicer = GeneratorServicer(self.engine)

        def register(server: grpc.aio.Server) -> None:
            generator_pb2_grpc.add_GeneratorServiceServicer_to_server(servicer, server)

        self.server = ServiceServer(settings, [SERVICE_NAME], register, self.metrics)

    def describe(self) -> Mapping[str, object]:
        """Device, catalog and batching."""
        settings = self.settings
        return {"device": self.device.describe(), "catalog": settings.catalog_path,
                "models": ",".join(self.catalog.models), "default": self.catalog.default_model,
                "isolation": settings.device_isolation, "queue_size": settings.queue_size,
                "batch_window_ms": settings.batch_window_ms, "max_batch": settings.max_batch_images}

    async def listen(self) -> int:
        """Starts the engine's worker (requests queue from now on), then binds the port."""
        await self.engine.start()
        return await super().listen()

    async def prepare(self) -> None:
        """Loads and warms the default model."""
        await self.engine.load_default(self.settings.warmup)

    async def close(self) -> None:
        """Fails the requests still waiting and stops the device runner."""
        await self.engine.stop()
