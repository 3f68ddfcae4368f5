"""One job from start to its terminal event.

The flow (DESIGN.md): wait for a running slot; start the generator call and
the reference upload at the same time; hand each generated image to the
swapper as soon as it arrives (up to ``swap_concurrency`` at once); turn every
upstream event into a JobEvent; end with exactly one terminal event. A job
whose reference upload fails stops at once (nothing could be swapped); a job
whose generator fails after some images arrived lets their swaps finish, so
the FAILED result still lists them.
"""

from __future__ import annotations

import asyncio
import logging
import time
from contextlib import aclosing
from dataclasses import dataclass

from facegen.v1 import common_pb2, gateway_pb2, generator_pb2, swapper_pb2
from services.common import logs
from services.common.errors import FacegenError, is_internal, new_incident_id, status_for
from services.common.names import method_name, reason_name, stage_name
from services.gateway.admission import Admission
from services.gateway.progress import Progress, StageClock
from services.gateway.settings import Settings
from services.gateway.store import JobStore
from services.gateway.upstreams import UpstreamFailed, Upstreams
from services.gateway.validation import JobSpec

log = logging.getLogger(__name__)

QUEUED, GENERATING, STORING, SWAPPING, FINALIZING, TERMINAL = (
    gateway_pb2.STAGE_QUEUED, gateway_pb2.STAGE_GENERATING, gateway_pb2.STAGE_STORING,
    gateway_pb2.STAGE_SWAPPING, gateway_pb2.STAGE_FINALIZING, gateway_pb2.STAGE_TERMINAL)


@dataclass(frozen=True)
class Services:
    """What every job of a gateway shares."""

    settings: Settings
    store: JobStore
    upstreams: Upstreams
    admission: Admission


class JobRun:
    """Runs one job and writes its events to the store."""

    def __init__(self, job_id: str, spec: JobSpec, services: Services, queue_ahead: int = -1) -> None:
        """``queue_ahead``: admitted jobs that will get a slot before this one (-1: it runs at once)."""
        self.job_id = job_id
        self._queue_ahead = queue_ahead
        self.spec = spec
        self._services = services
        self._store = services.store
        self._upstreams = services.upstreams
        self._progress = Progress(spec.num_images, spec.template_mode)
        self._clock = StageClock()
        self._seq = 0
        self._ended = False
        self._started = False
        self._cancel_reason: str | None = None
        self._task: asyncio.Task[None] | None = None
        self._results: dict[int, gateway_pb2.ImageResult] = {}
        self._failures: dict[int, gateway_pb2.ImageFailure] = {}
        self._reference_key = spec.reference_key
        self._reference_task: asyncio.Task[str] | None = None
        self._swaps: list[asyncio.Task[None]] = []
        self._swap_slots = asyncio.Semaphore(services.settings.swap_concurrency)

    # -- lifecycle -----------------------------------------------------------------

    async def _accept(self) -> None:
        """Writes the job's first event: accepted, or waiting behind ``queue_ahead`` jobs."""
        self._clock.start(QUEUED)
        ahead = self._queue_ahead
        message = f"waiting for a free slot ({ahead} jobs ahead)" if ahead >= 0 else "accepted"
        await self._emit(QUEUED, message, state=gateway_pb2.JOB_STATE_QUEUED, queue_position=max(0, ahead))

    def start(self) -> asyncio.Task[None]:
        """Starts the job's task (in the current context, so its log lines carry the job id).

        The task writes the job's first event, then waits for a running slot.
        """
        self._task = asyncio.create_task(self._run(), name=f"job-{self.job_id}")
        return self._task

    def cancel(self, reason: str) -> None:
        """Asks the job to stop everywhere; its terminal event will be CANCELLED with ``reason``."""
        if self._ended or self._cancel_reason is not None:
            return
        self._cancel_reason = reason
        # A task cancelled before its first step never runs its body; it checks the reason instead.
        if self._started and self._task is not None:
            self._task.cancel()

    async def _run(self) -> None:
        self._started = True
        try:
            if self._cancel_reason is not None:
                self._services.admission.release_unused()
                raise asyncio.CancelledError
            await self._accept()
            async with self._services.admission.slot():
                self._clock.stop(QUEUED)
                await self._execute()
            await self._finish()
        except asyncio.CancelledError:
            task = asyncio.current_task()
            if task is not None:
                task.uncancel()
            await self._end(gateway_pb2.JOB_STATE_CANCELLED, "CANCELLED",
                            self._cancel_reason or "the gateway is shutting down")
        except Exception as exc:
            code, message = status_for(exc)
            if is_internal(exc) and not isinstance(exc, FacegenError):
                incident = new_incident_id()
                log.error("event=job.internal_error incident=%s", incident, exc_info=exc)
                message = f"{message} (incident {incident})"
            await self._end(gateway_pb2.JOB_STATE_FAILED, code.name, message)

    # -- the pipeline --------------------------------------------------------------

    async def _execute(self) -> None:
        spec = self.spec
        what = ("swapping the face onto the target image" if spec.template_mode
                else f"generating {spec.num_images} image{'s' if spec.num_images > 1 else ''}")
        await self._emit(SWAPPING if spec.template_mode else GENERATING, f"started: {what}")
        reference = self._reference_task = asyncio.create_task(self._reference())
        producer = asyncio.create_task(self._produce())
        try:
            await asyncio.wait({reference, producer}, return_when=asyncio.FIRST_EXCEPTION)
            if reference.done() and reference.exception() is not None:
                raise _exception(reference)
            producer_error = producer.exception() if producer.done() else None
            if producer_error is not None and not self._swaps:
                raise producer_error
            await reference
            # Each swap records its own outcome; only a failed reference makes one raise.
            await asyncio.gather(*self._swaps)
            if producer_error is not None:
                raise producer_error
        finally:
            tasks = [reference, producer, *self._swaps]
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)

    async def _reference(self) -> str:
        if self._reference_key:
            return self._reference_key
        image, self.spec.reference_image = self.spec.reference_image, None
        assert image is not None
        self._clock.start(STORING)
        key = await self._upstreams.put_reference(self.job_id, image)
        self._clock.stop(STORING)
        self._reference_key = key
        await self._emit(STORING, "reference face stored")
        return key

    async def _produce(self) -> None:
        if self.spec.generate is None:
            target, self.spec.target_image = self.spec.target_image, None
            assert target is not None
            self._start_swap(0, target, seed=-1)
            return
        request = self.spec.generate
        request.job_id = self.job_id
        expected = set(range(self.spec.num_images))
        self._clock.start(GENERATING)
        try:
            async with aclosing(self._upstreams.generate(request)) as events:
                async for event in events:
                    await self._on_generate_event(event, expected)
        finally:
            self._clock.stop(GENERATING)
        if expected:
            missing = ", ".join(str(index) for index in sorted(expected))
            raise UpstreamFailed(f"the generator ended without image {missing}")

    async def _on_generate_event(self, event: generator_pb2.GenerateEvent, expected: set[int]) -> None:
        kind = event.WhichOneof("event")
        if kind == "queued":
            position = event.queued.position
            await self._emit(GENERATING, f"waiting for the generator (position {position})",
                             queue_position=position)
        elif kind == "step":
            step = event.step
            self._progress.step(step.step, step.total_steps)
            denoise = gateway_pb2.DenoiseProgress(step=step.step, total_steps=step.total_steps,
                                                  preview_png=step.preview_png)
            await self._emit(GENERATING, f"denoising step {step.step}/{step.total_steps}", denoise=denoise)
        elif kind == "image":
            image = event.image
            if image.index not in expected:
                logs.event(log, "job.unexpected_image", logging.WARNING, index=image.index)
                return
            expected.discard(image.index)
            if not expected:
                self._progress.generation_done()
            self._start_swap(image.index, image.png, image.seed)
            await self._emit(GENERATING, f"image {image.index} generated ({image.width}x{image.height}, "
                                         f"seed {image.seed})", image_index=image.index)
        elif kind == "done":
            self._progress.generation_done()
            await self._emit(GENERATING, f"generation finished (model {event.done.model or 'default'}, "
                                         f"{event.done.duration_ms} ms)")

    def _start_swap(self, index: int, image: bytes, seed: int) -> None:
        self._swaps.append(asyncio.create_task(self._swap(index, image, seed)))

    async def _swap(self, index: int, image: bytes, seed: int) -> None:
        assert self._reference_task is not None
        # Shielded: one swap being cancelled must not cancel the upload the others share.
        key = await asyncio.shield(self._reference_task)
        async with self._swap_slots:
            self._clock.start(SWAPPING)
            request = swapper_pb2.SwapRequest(
                job_id=self.job_id, image_index=index, target_image=image, reference_key=key,
                options=self.spec.swap_options,
                deadline_ms=self._services.settings.swap_remote_deadline_ms)
            del image
            try:
                result = await self._follow_swap(request)
                self._results[index] = _image_result(index, seed, result)
                self._progress.swap_event(index, "result")
                await self._emit(SWAPPING, _result_message(index, result), image_index=index,
                                 image=self._results[index])
            except Exception as exc:
                code, message = status_for(exc)
                if is_internal(exc) and not isinstance(exc, FacegenError):
                    log.error("event=job.swap_internal_error image=%d", index, exc_info=exc)
                self._failures[index] = gateway_pb2.ImageFailure(index=index, code=code.name, message=message)
                self._progress.image(index, 1.0)
                await self._emit(SWAPPING, f"image {index} failed: {code.name}: {message}", image_index=index)
            finally:
                self._clock.stop(SWAPPING)

    async def _follow_swap(self, request: swapper_pb2.SwapRequest) -> swapper_pb2.SwapResult:
        index = request.image_index
        result: swapper_pb2.SwapResult | None = None
        async with aclosing(self._upstreams.swap(request)) as events:
            async for event in events:
                kind = event.WhichOneof("event")
                if kind == "stored":
                    self._progress.swap_event(index, "stored")
                    await self._emit(STORING, f"image {index} stored", image_index=index)
                elif kind == "submitted":
                    self._progress.swap_event(index, "submitted")
                    remote = common_pb2.RemoteJobStatus(remote_job_id=event.submitted.remote_job_id,
                                                        endpoint=event.submitted.endpoint)
                    await self._emit(SWAPPING, f"image {index} submitted to face-swap endpoint "
                                               f"{remote.endpoint} as job {remote.remote_job_id}",
                                     image_index=index, remote=remote)
                elif kind == "remote_status":
                    status = event.remote_status
                    self._progress.swap_event(index, status.status)
                    message = (f"image {index}: remote job {status.status} "
                               f"(queued {status.delay_time_ms} ms, "
                               f"ran {status.execution_time_ms} ms)")
                    await self._emit(SWAPPING, message, image_index=index, remote=status)
                elif kind == "result":
                    result = event.result
        if result is None:
            raise UpstreamFailed(f"the swapper ended without a result for image {index}")
        return result

    # -- the end -------------------------------------------------------------------

    async def _finish(self) -> None:
        self._clock.start(FINALIZING)
        self._progress.finalizing()
        await self._emit(FINALIZING, "finalizing")
        self._clock.stop(FINALIZING)
        if self._failures:
            first = self._failures[min(self._failures)]
            details = "; ".join(f"image {failure.index}: {failure.message}"
                                for _, failure in sorted(self._failures.items()))
            await self._end(gateway_pb2.JOB_STATE_FAILED, first.code,
                            f"{len(self._failures)} of {self.spec.num_images} images failed: {details}")
            return
        self._progress.done()
        await self._end(gateway_pb2.JOB_STATE_COMPLETED, "OK", "")

    async def _end(self, state: gateway_pb2.JobState, code: str, message: str) -> None:
        if self._ended:
            return
        for index in range(self.spec.num_images):
            if index not in self._results and index not in self._failures:
                self._failures[index] = gateway_pb2.ImageFailure(index=index, code=code, message=message)
        result = gateway_pb2.JobResult(
            state=state,
            code=code,
            message=message,
            images=[self._results[index] for index in sorted(self._results)],
            failures=[self._failures[index] for index in sorted(self._failures)] if code != "OK" else [],
            timings=self._clock.timings(),
            reference_key=self._reference_key,
        )
        state_name = gateway_pb2.JobState.Name(state).removeprefix("JOB_STATE_")
        text = f"{state_name.lower()}" + (f": {code}: {message}" if code != "OK" else "")
        await self._emit(TERMINAL, text, state=state, result=result)
        self._ended = True

    async def _emit(self, stage: gateway_pb2.Stage, message: str, *,
                    state: gateway_pb2.JobState = gateway_pb2.JOB_STATE_RUNNING,
                    image_index: int = -1, denoise: gateway_pb2.DenoiseProgress | None = None,
                    remote: common_pb2.RemoteJobStatus | None = None,
                    image: gateway_pb2.ImageResult | None = None, result: gateway_pb2.JobResult | None = None,
                    queue_position: int = 0) -> None:
        if self._ended:
            return
        self._seq += 1
        event = gateway_pb2.JobEvent(
            job_id=self.job_id, seq=self._seq, stage=stage, percent=self._progress.percent,
            message=message, image_index=image_index, denoise=denoise, remote=remote, image=image,
            result=result, queue_position=queue_position)
        event.time.seconds, event.time.nanos = divmod(time.time_ns(), 1_000_000_000)
        # Denoising steps are the bulk of a job's events: they are logged at DEBUG only.
        logs.event(log, "job.event", logging.DEBUG if denoise is not None else logging.INFO,
                   seq=self._seq, stage=stage_name(stage), percent=event.percent,
                   image=image_index, message=message)
        await self._store.append(self.job_id, event, state)


def _exception(task: asyncio.Task[str]) -> BaseException:
    exc = task.exception()
    assert exc is not None
    return exc


def _image_result(index: int, seed: int, result: swapper_pb2.SwapResult) -> gateway_pb2.ImageResult:
    return gateway_pb2.ImageResult(
        index=index, url=result.url, storage_key=result.key, content_type=result.content_type,
        width=result.width, height=result.height, seed=seed, face_swap_method=result.method,
        fallback_reason=result.fallback_reason, fallback_message=result.fallback_message)


def _result_message(index: int, result: swapper_pb2.SwapResult) -> str:
    if result.method == common_pb2.FACE_SWAP_METHOD_NONE:
        reason = reason_name(result.fallback_reason)
        detail = f": {result.fallback_message}" if result.fallback_message else ""
        return f"image {index} ready without face swap ({reason}{detail})"
    return f"image {index} ready (face swapped by {method_name(result.method)})"
