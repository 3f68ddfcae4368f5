"""The gRPC face of the generator: ``facegen.v1.GeneratorService``."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator

import grpc

from facegen.v1 import common_pb2, generator_pb2, generator_pb2_grpc
from services.common import logs
from services.generator.engine import Engine
from services.generator.params import validate


class GeneratorServicer(generator_pb2_grpc.GeneratorServiceServicer):
    """Validates requests, queues them on the engine and streams their events."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine

    async def Generate(self, request: generator_pb2.GenerateRequest,
                       context: grpc.aio.ServicerContext) -> AsyncIterator[generator_pb2.GenerateEvent]:
        """Streams queued → step × N → image × n → done; errors end the call with a mapped status."""
        job_id = request.job_id or f"gen-{uuid.uuid4().hex[:12]}"
        with logs.job_context(job_id):
            params = validate(request, self.engine.catalog, self.engine.settings.max_prompt_chars, job_id)
            job = self.engine.submit(params)
            try:
                async for event in job.events():
                    yield event
            finally:
                # Reached early when the caller cancels (the handler task is cancelled) or leaves.
                self.engine.cancel(job)

    async def ListModels(self, request: common_pb2.ListModelsRequest,
                         context: grpc.aio.ServicerContext) -> common_pb2.ListModelsResponse:
        """The catalog's models with their limits and whether each is loaded."""
        return self.engine.list_models()
