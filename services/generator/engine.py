"""The generator's core: the queue, the batches, and the device runner that runs them.

One runner per device (a child process by default, or a thread) runs every
pipeline call and every model load, one at a time; the event loop only
queues, batches and delivers. Images are encoded to PNG off the device, so
the next batch starts as soon as the pipeline returns.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time

from PIL import Image

from facegen.v1 import common_pb2
from services.common import logs
from services.common.errors import ResourceExhausted, Unavailable
from services.generator.batcher import Batcher
from services.generator.catalog import Catalog
from services.generator.device import Device
from services.generator.device_process import ProcessRunner
from services.generator.device_thread import DeviceRunner, ThreadRunner
from services.generator.jobs import Job, done_event, image_event
from services.generator.metrics import GeneratorMetrics
from services.generator.params import GenerationParams
from services.generator.runner import BatchInterrupted, BatchOutput, encode_png
from services.generator.settings import Settings

log = logging.getLogger(__name__)


class Engine:
    """Accepts validated requests and runs them on the device in batches."""

    def __init__(self, settings: Settings, catalog: Catalog, device: Device,
                 metrics: GeneratorMetrics | None = None) -> None:
        self.settings = settings
        self.catalog = catalog
        self.device = device
        self.metrics = metrics or GeneratorMetrics()
        self.runner: DeviceRunner = (
            ProcessRunner(settings, device, self.metrics.device) if settings.device_isolation == "process"
            else ThreadRunner(settings, catalog, device, self.metrics.device))
        self._batcher = Batcher(self._execute, settings.queue_size, settings.batch_window_ms / 1000,
                                settings.max_batch_images)
        self.metrics.queue_depth.set_function(lambda: self._batcher.waiting)
        self._worker: asyncio.Task[None] | None = None
        self._deliveries: set[asyncio.Task[None]] = set()
        self.ready = False

    async def start(self) -> None:
        """Starts the worker that feeds the device (requests queue from now on)."""
        if self._worker is None:
            self._worker = asyncio.create_task(self._batcher.run(), name="generator-worker")

    async def load_default(self, warmup: bool = True) -> None:
        """Loads the default model and runs one warm-up generation; then the engine is ready."""
        name = self.catalog.default_model
        await self.runner.load(name)
        if warmup:
            duration_ms = await self.runner.warm_up(name)
            logs.event(log, "model.warm", model=name, warmup_ms=duration_ms)
        self.ready = True

    def submit(self, params: GenerationParams) -> Job:
        """Queues a request; ResourceExhausted when the queue is full."""
        job = Job(params, asyncio.get_running_loop())
        self._batcher.submit(job)
        logs.event(log, "generate.queued", model=params.model, images=params.num_images,
                   size=f"{params.width}x{params.height}", steps=params.steps,
                   lora=params.lora.name if params.lora else "-", position=self._batcher.waiting - 1)
        return job

    def cancel(self, job: Job) -> None:
        """The caller left: drop the job from the queue, or stop its denoising loop."""
        if job.closed:
            return
        self.runner.cancel(job)
        waiting = self._batcher.withdraw(job)
        logs.event(log, "generate.cancelled", where="queue" if waiting else "device",
                   after_step=job.cancelled_after_step)

    def list_models(self) -> common_pb2.ListModelsResponse:
        """Every catalog model with its limits, and whether it is in memory."""
        loaded = self.runner.loaded_names()
        return common_pb2.ListModelsResponse(models=[
            self.catalog.info(spec, loaded=spec.name in loaded) for spec in self.catalog.models.values()])

    async def stop(self) -> None:
        """Fails waiting jobs with UNAVAILABLE and stops the worker and the device runner."""
        for job in self._batcher.drain():
            job.fail(Unavailable("the generator is shutting down; retry"))
        if self._worker is not None:
            self._worker.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._worker
            self._worker = None
        if self._deliveries:
            await asyncio.gather(*self._deliveries, return_exceptions=True)
        await self.runner.stop()

    async def _execute(self, batch: list[Job]) -> None:
        live = [job for job in batch if not job.cancelled.is_set()]
        if not live:
            return
        ids = tuple(job.params.job_id for job in live)
        images = sum(job.params.num_images for job in live)
        model = live[0].params.model
        metrics = self.metrics
        now = time.monotonic()
        for job in live:
            metrics.queue_wait_seconds.labels(model=model).observe(now - job.enqueued_at)
        metrics.batch_images.labels(model=model).observe(images)
        metrics.batch_requests.labels(model=model).observe(len(live))
        for job in live:
            if job.span.is_recording():
                job.span.add_event("generate.batch_started", {"requests": len(live), "images": images})
        with logs.job_context(",".join(ids)):
            logs.event(log, "generate.started", model=model, requests=len(live), images=images)
            try:
                output = await self.runner.run(live)
            except BatchInterrupted as stop:
                metrics.batches.labels(model=model, outcome="cancelled").inc()
                logs.event(log, "generate.interrupted", step=stop.step,
                           cancelled_after_step=max(job.cancelled_after_step or 0 for job in live))
                return
            except Exception as exc:
                metrics.batches.labels(model=model, outcome="failed").inc()
                if isinstance(exc, ResourceExhausted):  # the device's only refusal: out of memory
                    metrics.out_of_memory.labels(model=model).inc()
                for job in live:
                    job.fail(exc)
                return
            metrics.batches.labels(model=model, outcome="done").inc()
            if output.steps_run:
                step = metrics.step_seconds.labels(model=model)
                for _ in range(output.steps_run):
                    step.observe(output.denoise_ms / 1000 / output.steps_run)
            left = [job.params.job_id for job in live if job.cancelled.is_set()]
            logs.event(log, "generate.finished", duration_ms=output.duration_ms, requests=len(live), images=images,
                       steps=output.steps_run, left=",".join(left) or "-")
        task = asyncio.create_task(self._deliver(live, output))
        self._deliveries.add(task)
        task.add_done_callback(self._deliveries.discard)

    async def _deliver(self, jobs: list[Job], output: BatchOutput) -> None:
        for job, images in zip(jobs, output.images, strict=True):
            if job.cancelled.is_set():
                continue
            try:
                pngs = await asyncio.to_thread(_encode_all, images)
            except Exception as exc:
                job.fail(exc)
                continue
            params = job.params
            for index, (png, image) in enumerate(zip(pngs, images, strict=True)):
                job.emit(image_event(index, png, image.width, image.height, params.seeds[index]))
            job.emit(done_event(params.model, output.duration_ms, len(jobs)))
            job.finish()


def _encode_all(images: list[Image.Image]) -> list[bytes]:
    return [encode_png(image) for image in images]
