"""Assembling the generator: settings → catalog → device → engine → gRPC server."""

from __future__ import annotations

import logging
from dataclasses import dataclass

from facegen.v1 import generator_pb2, generator_pb2_grpc
from services.common import logs
from services.common.server import ServiceServer
from services.generator.catalog import load_catalog
from services.generator.device import resolve_device, use_torch_threads
from services.generator.engine import Engine
from services.generator.pipelines import quiet_libraries
from services.generator.service import GeneratorServicer
from services.generator.settings import Settings

log = logging.getLogger(__name__)
SERVICE_NAME = generator_pb2.DESCRIPTOR.services_by_name["GeneratorService"].full_name


@dataclass
class GeneratorApp:
    """A server and the engine behind it, not yet started."""

    server: ServiceServer
    engine: Engine

    async def start(self) -> int:
        """Binds the port and starts taking requests (health stays NOT_SERVING); returns the port."""
        await self.engine.start()
        return await self.server.start()

    async def load(self) -> None:
        """Loads and warms the default model, then reports SERVING."""
        await self.engine.load_default(self.engine.settings.warmup)
        await self.server.set_serving(True)

    async def stop(self, grace: float | None = None) -> None:
        """Drains in-flight calls for ``grace`` seconds, then stops the engine."""
        await self.server.stop(grace)
        await self.engine.stop()


def build_app(settings: Settings) -> GeneratorApp:
    """Reads the catalog, picks the device and wires the servicer; loads no model yet."""
    quiet_libraries()
    catalog = load_catalog(settings.catalog_path, settings.models_dir)
    device = resolve_device(settings.device)
    use_torch_threads(settings.torch_threads, device)
    logs.event(log, "generator.configured", device=device.describe(), catalog=settings.catalog_path,
               models=",".join(catalog.models), default=catalog.default_model,
               queue_size=settings.queue_size, batch_window_ms=settings.batch_window_ms,
               max_batch=settings.max_batch_images)
    engine = Engine(settings, catalog, device)
    servicer = GeneratorServicer(engine)
    server = ServiceServer(settings.server, [SERVICE_NAME],
                           lambda grpc_server: generator_pb2_grpc.add_GeneratorServiceServicer_to_server(
                               servicer, grpc_server))
    return GeneratorApp(server=server, engine=engine)
