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
            span = job.span
            try:
                async for event in job.events():
                    if span.is_recording():
                        # Queue positions, steps and images are events of the call's span, not spans.
                        kind = event.WhichOneof("event")
                        span.add_event(f"generate.{kind}", _attributes(event, kind))
                    yield event
            finally:
                # Reached early when the caller cancels (the handler task is cancelled) or leaves.
                self.engine.cancel(job)

    async def ListModels(self, request: common_pb2.ListModelsRequest,
                         context: grpc.aio.ServicerContext) -> common_pb2.ListModelsResponse:
        """The catalog's models with their limits and whether each is loaded."""
        return self.engine.list_models()


def _attributes(event: generator_pb2.GenerateEvent, kind: str | None) -> dict[str, int]:
    if kind == "queued":
        return {"position": event.queued.position}
    if kind == "step":
        return {"step": event.step.step, "total_steps": event.step.total_steps}
    if kind == "image":
        return {"index": event.image.index, "seed": event.image.seed}
    if kind == "done":
        return {"duration_ms": event.done.duration_ms, "batch_size": event.done.batch_size}
    return {}
