"""One job from its claim to its terminal event, or to where another gateway takes it over.

The flow (docs/architecture.md, "A job's journey"): start the generator call and,
unless Submit stored it already, the reference upload at the same time; hand each
generated image to the swapper as soon as it arrives (up to ``swap_concurrency``
at once); turn every upstream event into a JobEvent; end with exactly one
terminal event. A job whose reference upload fails stops at once (nothing could
be swapped); a job whose generator fails after some images arrived lets their
swaps finish, so the FAILED result still lists them.

Every step that would be costly or wrong to repeat is checkpointed with the
event that reports it: an image stored, its remote job submitted, its result.
A job claimed again after its gateway was lost (``Lease.resumed``) starts from
those checkpoints: finished images are kept, stored ones go straight to the
swapper (which follows their remote job instead of submitting a new one), and
only the images never stored are generated again, from the seed fixed at
submit, so they are the same images.
"""

from __future__ import annotations

import asyncio
import logging
import time
from contextlib import aclosing
from dataclasses import dataclass, field

from facegen.v1 import common_pb2, gateway_pb2, generator_pb2, swapper_pb2
from services.common import logs, tracing
from services.common.errors import FacegenError, Unavailable, is_internal, new_incident_id, status_for
from services.common.names import reason_name, stage_name
from services.gateway.messages import image_result, result_message
from services.gateway.metrics import GatewayMetrics
from services.gateway.progress import Progress, StageClock
from services.gateway.settings import Settings
from services.gateway.store import TERMINAL_STATES, ImageCheckpoint, JobStore, Lease, LeaseLost
from services.gateway.upstreams import UpstreamFailed, Upstreams

log = logging.getLogger(__name__)

QUEUED, GENERATING, STORING, SWAPPING, FINALIZING, TERMINAL = (
    gateway_pb2.STAGE_QUEUED, gateway_pb2.STAGE_GENERATING, gateway_pb2.STAGE_STORING,
    gateway_pb2.STAGE_SWAPPING, gateway_pb2.STAGE_FINALIZING, gateway_pb2.STAGE_TERMINAL)
# How long the clean-up of a job's left-over remote swaps may take.
CANCEL_SWAPS_SECONDS = 10.0
# Calls a resumable swap may take when its swapper is lost (each goes on where the last stopped).
SWAP_ATTEMPTS = 3


@dataclass(frozen=True)
class Services:
    """What every job of a gateway shares."""

    settings: Settings
    store: JobStore
    upstreams: Upstreams
    # Swaps outlive a lost gateway so that another one resumes them (a shared store).
    resumable_swaps: bool = False
    metrics: GatewayMetrics = field(default_factory=GatewayMetrics)


class JobRun:
    """Runs one claimed job and writes its events to the store."""

    def __init__(self, lease: Lease, services: Services) -> None:
        self.lease = lease
        self.job_id = lease.job_id
        self.spec = lease.spec
        self._services = services
        self._store = services.store
        self._upstreams = services.upstreams
        self._progress = Progress(self.spec.num_images, self.spec.template_mode, floor=lease.percent)
        self._clock = StageClock()
        self._stage = lease.stage
        self._ended = False
        self._started = False
        self._detached = False
        self._cancel_reason: str | None = lease.cancel_reason
        self._task: asyncio.Task[None] | None = None
        self._images = lease.images
        self._reference_task: asyncio.Task[str] | None = None
        self._swaps: list[asyncio.Task[None]] = []
        # Images whose Swap this run has called: a resumable swap outlives its call, so each of them
        # gets a CancelSwap when the job ends without its result (even before the swapper stored it).
        self._swaps_called: set[int] = set()
        self._swap_slots = asyncio.Semaphore(services.settings.swap_concurrency)
        self._metrics = services.metrics
        # This run's span (a child of the submitting call's span, also on a resume); events go on it.
        self._span = tracing.NO_SPAN
        self._failure: str | None = None
        for index, point in self._images.items():
            if point.finished:
                self._progress.image(index, 1.0)
            elif point.stored_key:
                self._progress.swap_event(index, "stored")

    # -- lifecycle -----------------------------------------------------------------

    def start(self) -> asyncio.Task[None]:
        """Starts the job's task (in the current context, so its log lines carry the job id)."""
        self._task = asyncio.create_task(self._run(), name=f"job-{self.job_id}")
        return self._task

    def cancel(self, reason: str) -> None:
        """Asks the job to stop everywhere; its terminal event will be CANCELLED with ``reason``."""
        if self._ended or self._cancel_reason is not None:
            return
        self._cancel_reason = reason
        self._interrupt()

    def detach(self) -> None:
        """Stops the job here without ending it: another gateway holds it now, or will.

        Resumable swaps in flight are left running for the next holder.
        """
        if self._ended:
            return
        self._detached = True
        self._interrupt()

    def _interrupt(self) -> None:
        # A task cancelled before its first step never runs its body; it checks the flags instead.
        if self._started and self._task is not None:
            self._task.cancel()

    async def _run(self) -> None:
        self._started = True
        self._span = tracing.start_span("facegen.job", parent=tracing.context_of(self.spec.traceparent), attributes={
            tracing.JOB_ID: self.job_id, "facegen.mode": self.spec.mode, "facegen.images": self.spec.num_images,
            "facegen.resumed": self.lease.resumed, "facegen.gateway": self.lease.owner})
        try:
            with tracing.use_span(self._span):
                await self._run_job()
        finally:
            tracing.end(self._span, self._failure)

    async def _run_job(self) -> None:
        try:
            if self._detached or self._cancel_reason is not None:
                raise asyncio.CancelledError
            if self.lease.resumed:
                await self._announce_resume()
            else:
                queued_s = time.time() - self.lease.created_at
                self._clock.record(QUEUED, queued_s)
                logs.event(log, "job.started", owner=self.lease.owner, queued_ms=round(queued_s * 1000))
            await self._execute()
            await self._finish()
        except asyncio.CancelledError:
            task = asyncio.current_task()
            if task is not None:
                task.uncancel()
            if not self._detached:
                await self._end(gateway_pb2.JOB_STATE_CANCELLED, "CANCELLED",
                                self._cancel_reason or "the gateway is shutting down")
        except LeaseLost:
            self._detached = True
        except Exception as exc:
            code, message = status_for(exc)
            if is_internal(exc) and not isinstance(exc, FacegenError):
                incident = new_incident_id()
                logs.event(log, "job.internal_error", logging.ERROR, incident=incident, exc_info=exc)
                message = f"{message} (incident {incident})"
            await self._end(gateway_pb2.JOB_STATE_FAILED, code.name, message)
        finally:
            if self._detached:
                logs.event(log, "job.detached", owner=self.lease.owner)

    async def _announce_resume(self) -> None:
        done = sum(point.finished for point in self._images.values())
        stored = sum(bool(point.stored_key) and not point.finished for point in self._images.values())
        previous = self.lease.previous_owner or "a gateway that stopped"
        self._metrics.jobs_resumed.inc()
        logs.event(log, "job.resumed", previous=previous, finished=done, stored=stored)
        await self._emit(self._stage, f"resumed by gateway {self.lease.owner} after {previous} stopped "
                                      f"renewing its lease ({done} of {self.spec.num_images} images finished, "
                                      f"{stored} stored)", resumed=True)

    # -- the pipeline --------------------------------------------------------------

    async def _execute(self) -> None:
        spec = self.spec
        todo = [index for index in range(spec.num_images) if not self._image(index).finished]
        if not todo:
            return
        if not self.lease.resumed:
            what = ("swapping the face onto the target image" if spec.template_mode
                    else f"generating {spec.num_images} image{'s' if spec.num_images > 1 else ''}")
            await self._emit(SWAPPING if spec.template_mode else GENERATING, f"started: {what}")
        reference = self._reference_task = asyncio.create_task(self._reference())
        producer = asyncio.create_task(self._produce(todo))
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

    def _image(self, index: int) -> ImageCheckpoint:
        return self._images.setdefault(index, ImageCheckpoint())

    async def _reference(self) -> str:
        spec = self.spec
        if spec.reference_key:
            return spec.reference_key
        image, spec.reference_image = spec.reference_image, None
        assert image is not None
        self._clock.start(STORING)
        key = await self._upstreams.put_reference(self.job_id, image)
        self._clock.stop(STORING)
        spec.reference_key = key
        # The upload runs beside generation: it does not move the job's stage.
        await self._emit(self._stage, "reference face stored")
        return key

    async def _produce(self, todo: list[int]) -> None:
        stored = [index for index in todo if self._image(index).stored_key]
        for index in stored:
            self._start_swap(index, None, self._seed(index))
        missing = [index for index in todo if index not in stored]
        if not missing:
            self._progress.generation_done()
            return
        if self.spec.generate is None:
            target, self.spec.target_image = self.spec.target_image, None
            assert target is not None, "a template job's target is stored or held in memory"
            self._start_swap(0, target, seed=-1)
            return
        await self._generate(missing)

    def _seed(self, index: int) -> int:
        generate = self.spec.generate
        return -1 if generate is None else generate.seed + index

    async def _generate(self, missing: list[int]) -> None:
        """Generates the images in ``missing`` (all of them, unless the job is resumed)."""
        assert self.spec.generate is not None
        first, last = min(missing), max(missing)
        request = generator_pb2.GenerateRequest()
        request.CopyFrom(self.spec.generate)
        request.job_id = self.job_id
        # Image i uses seed + i: asking for images first..last from seed + first gives the same images.
        request.seed = self.spec.generate.seed + first
        request.num_images = last - first + 1
        expected = set(missing)
        self._clock.start(GENERATING)
        try:
            async with aclosing(self._upstreams.generate(request)) as events:
                async for event in events:
                    await self._on_generate_event(event, range(first, last + 1), expected)
        finally:
            self._clock.stop(GENERATING)
        if expected:
            missing_text = ", ".join(str(index) for index in sorted(expected))
            raise UpstreamFailed(f"the generator ended without image {missing_text}")

    async def _on_generate_event(self, event: generator_pb2.GenerateEvent, indexes: range,
                                 expected: set[int]) -> None:
        """Reports one generator event; image i of the call is image ``indexes[i]`` of the job."""
        kind = event.WhichOneof("event")
        if kind == "queued":
            position = event.queued.position
            await self._emit(GENERATING, f"waiting for the generator (position {position})",
                             queue_position=position, milestone=False)
        elif kind == "step":
            step = event.step
            self._progress.step(step.step, step.total_steps)
            denoise = gateway_pb2.DenoiseProgress(step=step.step, total_steps=step.total_steps,
                                                  preview_png=step.preview_png)
            await self._emit(GENERATING, f"denoising step {step.step}/{step.total_steps}", denoise=denoise)
        elif kind == "image":
            image = event.image
            index = indexes.start + image.index
            if index not in expected:
                # Images of the range that a resumed job had stored already are not needed again.
                if index not in indexes:
                    logs.event(log, "job.unexpected_image", logging.WARNING, index=index)
                return
            expected.discard(index)
            if not expected:
                self._progress.generation_done()
            self._start_swap(index, image.png, image.seed)
            await self._emit(GENERATING, f"image {index} generated ({image.width}x{image.height}, "
                                         f"seed {image.seed})", image_index=index)
        elif kind == "done":
            self._progress.generation_done()
            await self._emit(GENERATING, f"generation finished (model {event.done.model or 'default'}, "
                                         f"{event.done.duration_ms} ms)")

    def _start_swap(self, index: int, image: bytes | None, seed: int) -> None:
        self._swaps.append(asyncio.create_task(self._swap(index, image, seed)))

    async def _swap(self, index: int, image: bytes | None, seed: int) -> None:
        assert self._reference_task is not None
        # Shielded: one swap being cancelled must not cancel the upload the others share.
        key = await asyncio.shield(self._reference_task)
        async with self._swap_slots:
            self._clock.start(SWAPPING)
            request = swapper_pb2.SwapRequest(
                job_id=self.job_id, image_index=index, target_image=image or b"",
                target_key="" if image else self._image(index).stored_key, reference_key=key,
                options=self.spec.swap_options, deadline_ms=self._services.settings.swap_remote_deadline_ms,
                resumable=self._services.resumable_swaps)
            del image
            point = self._image(index)
            self._swaps_called.add(index)
            try:
                result = await self._swap_resuming(request)
                point.result = image_result(index, seed, result)
                self._progress.swap_event(index, "result")
                await self._emit(SWAPPING, result_message(index, result), image_index=index,
                                 image=point.result, checkpoint=index)
            except (asyncio.CancelledError, LeaseLost):
                raise
            except Exception as exc:
                code, message = status_for(exc)
                if is_internal(exc) and not isinstance(exc, FacegenError):
                    logs.event(log, "job.swap_internal_error", logging.ERROR, image=index, exc_info=exc)
                point.failure = gateway_pb2.ImageFailure(index=index, code=code.name, message=message)
                self._progress.image(index, 1.0)
                await self._emit(SWAPPING, f"image {index} failed: {code.name}: {message}", image_index=index,
                                 checkpoint=index)
            finally:
                self._clock.stop(SWAPPING)

    async def _swap_resuming(self, request: swapper_pb2.SwapRequest) -> swapper_pb2.SwapResult:
        """The swap's result; a resumable swap whose swapper was lost is followed again on another one.

        Its image is stored and its RunPod job recorded, so the next swapper
        replica goes on from there: nothing is stored or submitted twice.
        """
        point = self._image(request.image_index)
        for attempt in range(1, SWAP_ATTEMPTS + 1):
            try:
                return await self._follow_swap(request)
            except Unavailable as exc:
                if not (request.resumable and point.stored_key) or attempt == SWAP_ATTEMPTS:
                    raise
                logs.event(log, "job.swap_resumed", logging.WARNING, image=request.image_index, attempt=attempt,
                           error=exc)
                request.target_image, request.target_key = b"", point.stored_key
        raise AssertionError("unreachable")

    async def _follow_swap(self, request: swapper_pb2.SwapRequest) -> swapper_pb2.SwapResult:
        index = request.image_index
        point = self._image(index)
        result: swapper_pb2.SwapResult | None = None
        async with aclosing(self._upstreams.swap(request)) as events:
            async for event in events:
                kind = event.WhichOneof("event")
                if kind == "stored":
                    point.stored_key = event.stored.key
                    self._progress.swap_event(index, "stored")
                    await self._emit(STORING, f"image {index} stored", image_index=index, checkpoint=index)
                elif kind == "submitted":
                    submitted = event.submitted
                    point.remote_job_id, point.endpoint = submitted.remote_job_id, submitted.endpoint
                    self._progress.swap_event(index, "submitted")
                    remote = common_pb2.RemoteJobStatus(remote_job_id=submitted.remote_job_id,
                                                        endpoint=submitted.endpoint)
                    verb = "still followed on" if submitted.resumed else "submitted to"
                    await self._emit(SWAPPING, f"image {index} {verb} face-swap endpoint "
                                               f"{remote.endpoint} as job {remote.remote_job_id}",
                                     image_index=index, remote=remote, checkpoint=index)
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
        failures = {index: point.failure for index, point in self._images.items() if point.failure is not None}
        if failures:
            first = failures[min(failures)]
            details = "; ".join(f"image {index}: {failure.message}" for index, failure in sorted(failures.items()))
            await self._end(gateway_pb2.JOB_STATE_FAILED, first.code,
                            f"{len(failures)} of {self.spec.num_images} images failed: {details}")
            return
        self._progress.done()
        await self._end(gateway_pb2.JOB_STATE_COMPLETED, "OK", "")

    async def _end(self, state: gateway_pb2.JobState, code: str, message: str) -> None:
        if self._ended:
            return
        await self._cancel_left_over_swaps()
        for index in range(self.spec.num_images):
            point = self._image(index)
            if not point.finished:
                point.failure = gateway_pb2.ImageFailure(index=index, code=code, message=message)
        images = sorted(self._images.items())
        result = gateway_pb2.JobResult(
            state=state,
            code=code,
            message=message,
            images=[point.result for _, point in images if point.result is not None],
            failures=[point.failure for _, point in images if point.failure is not None] if code != "OK" else [],
            timings=self._clock.timings(),
            reference_key=self.spec.reference_key,
            trace_id=tracing.trace_id_of(self.spec.traceparent) or tracing.trace_id(self._span),
        )
        state_name = gateway_pb2.JobState.Name(state).removeprefix("JOB_STATE_").lower()
        text = state_name + (f": {code}: {message}" if code != "OK" else "")
        if state == gateway_pb2.JOB_STATE_FAILED:
            self._failure = f"{code}: {message}"
        await self._emit(TERMINAL, text, state=state, result=result)
        self._ended = True
        self._record(state_name, code, result)

    def _record(self, state: str, code: str, result: gateway_pb2.JobResult) -> None:
        """The job's line at INFO and its metrics, once, where its terminal event was written."""
        metrics, mode = self._metrics, self.spec.mode
        seconds = max(0.0, time.time() - self.lease.created_at)
        metrics.jobs_finished.labels(mode=mode, state=state, code=code).inc()
        metrics.job_seconds.labels(mode=mode, state=state).observe(seconds)
        metrics.job_images.observe(self.spec.num_images)
        for timing in result.timings:
            metrics.stage_seconds.labels(stage=stage_name(timing.stage)).observe(timing.duration_ms / 1000)
        fallbacks = 0
        for image in result.images:
            if image.face_swap_method == common_pb2.FACE_SWAP_METHOD_NONE:
                fallbacks += 1
                metrics.fallbacks.labels(reason=reason_name(image.fallback_reason)).inc()
        swapped = len(result.images) - fallbacks
        for outcome, count in (("swapped", swapped), ("fallback", fallbacks), ("failed", len(result.failures))):
            if count:
                metrics.images.labels(outcome=outcome).inc(count)
        logs.event(log, "job.finished", state=state, code=code, duration_ms=round(seconds * 1000),
                   images=len(result.images), swapped=swapped, fallbacks=fallbacks, failed=len(result.failures),
                   trace_id=result.trace_id or "-")

    async def _cancel_left_over_swaps(self) -> None:
        """Ends the remote jobs and stored targets of resumable swaps that will never be followed again."""
        if not self._services.resumable_swaps:
            return
        left = [index for index, point in self._images.items()
                if (point.stored_key or index in self._swaps_called) and not point.finished]
        if not left:
            return
        try:
            async with asyncio.timeout(CANCEL_SWAPS_SECONDS):
                await asyncio.gather(*(self._upstreams.cancel_swap(self.job_id, index) for index in left))
        except (TimeoutError, FacegenError) as exc:
            logs.event(log, "job.cancel_swaps_failed", logging.WARNING, images=len(left), error=exc)

    async def _emit(self, stage: gateway_pb2.Stage, message: str, *,
                    state: gateway_pb2.JobState = gateway_pb2.JOB_STATE_RUNNING,
                    image_index: int = -1, denoise: gateway_pb2.DenoiseProgress | None = None,
                    remote: common_pb2.RemoteJobStatus | None = None,
                    image: gateway_pb2.ImageResult | None = None, result: gateway_pb2.JobResult | None = None,
                    queue_position: int = 0, resumed: bool = False, checkpoint: int | None = None,
                    milestone: bool = True) -> None:
        if self._ended:
            return
        # A job's stage never goes backwards: per-image detail lives in the image and remote fields.
        self._stage = stage = max(self._stage, stage)
        event = gateway_pb2.JobEvent(
            job_id=self.job_id, stage=stage, percent=self._progress.percent,
            message=message, image_index=image_index, denoise=denoise, remote=remote, image=image,
            result=result, queue_position=queue_position, resumed=resumed)
        event.time.seconds, event.time.nanos = divmod(time.time_ns(), 1_000_000_000)
        checkpoints = None if checkpoint is None else {checkpoint: self._image(checkpoint)}
        await self._store.append(self.lease, event, state, checkpoints)
        if self._span.is_recording() and milestone and denoise is None and remote is None:
            # The job's milestones go on its span as events, not as spans. Denoising steps, queue
            # positions and remote statuses are not repeated there: they are events of the
            # generator's and swapper's spans in the same trace (an event costs the gateway ~25 µs
            # of CPU, recorded and exported; bench/gateway.py).
            attributes: dict[str, str | int] = {"seq": event.seq, "message": message}
            if image_index >= 0:
                attributes["image"] = image_index
            self._span.add_event(f"job.{stage_name(stage)}", attributes)
        # The job's life at INFO (job.started, job.finished ...); each event at DEBUG only.
        logs.event(log, "job.event", logging.DEBUG, seq=event.seq, stage=stage_name(stage),
                   percent=round(event.percent, 2), image=image_index, message=message)
        if state in TERMINAL_STATES:
            self._ended = True


def _exception(task: asyncio.Task[str]) -> BaseException:
    exc = task.exception()
    assert exc is not None
    return exc
