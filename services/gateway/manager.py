"""Submits, cancels, reads and watches jobs: the gateway's behaviour without gRPC.

A submitted job is made durable first, then stored with its first event and
queued; whichever gateway has a free slot runs it (this one, with the
in-memory store). With a shared store the reference face and a template's
target are stored before the job is queued, and the seed is fixed, so that
any gateway can run or resume the job from what the store holds.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import secrets
import uuid
from collections.abc import AsyncIterator
from contextlib import aclosing

from facegen.v1 import gateway_pb2
from services.common import logs, tracing
from services.common.errors import AlreadyExists, InvalidInput, NotFound, ResourceExhausted, Unavailable
from services.common.model_limits import check_lora, find_model, settle
from services.gateway.admission import AdmissionLimits
from services.gateway.auth import caller_var
from services.gateway.dispatcher import SHUTDOWN_MESSAGE, Dispatcher
from services.gateway.memory_store import InMemoryJobStore
from services.gateway.metrics import GatewayMetrics
from services.gateway.models import ModelCatalog
from services.gateway.orchestrator import Services
from services.gateway.settings import Settings
from services.gateway.store import (
    TERMINAL_STATES,
    ImageCheckpoint,
    JobStore,
    NewJob,
    StoreUnavailable,
    fingerprint,
)
from services.gateway.upstreams import Upstreams
from services.gateway.validation import MAX_NAME_CHARS, JobSpec, RequestValidator

log = logging.getLogger(__name__)

# How long Cancel waits for a job to reach its terminal event before answering.
CANCEL_WAIT_SECONDS = 5.0
# Random seeds are drawn below 2**32 so that every client can show and re-enter them.
RANDOM_SEED_LIMIT = 2**32
STORE_DOWN = "the job store is unavailable; retry later"


def build_store(settings: Settings) -> JobStore:
    """The store the settings name."""
    limits = AdmissionLimits(settings.max_running_jobs, settings.max_queued_jobs)
    if settings.store == "redis":
        from services.gateway.redis_store import RedisJobStore  # only with GATEWAY_STORE=redis

        assert settings.redis is not None
        return RedisJobStore(settings.redis, limits, settings.job_ttl_seconds, settings.max_events_per_job,
                             settings.lease_seconds, settings.instance)
    return InMemoryJobStore(settings.job_ttl_seconds, settings.max_jobs, settings.max_events_per_job, limits)


class JobManager:
    """Owns this gateway's view of the jobs: the store, and the dispatcher that runs its share."""

    def __init__(self, settings: Settings, upstreams: Upstreams, store: JobStore | None = None,
                 metrics: GatewayMetrics | None = None) -> None:
        self.settings = settings
        self.store = store or build_store(settings)
        self.metrics = metrics or GatewayMetrics()
        self._upstreams = upstreams
        self._models = ModelCatalog(upstreams.list_models)
        self._shared = self.store.lease_seconds is not None
        services = Services(settings, self.store, upstreams, resumable_swaps=self._shared, metrics=self.metrics)
        self.dispatcher = Dispatcher(services, settings.instance, settings.max_running_jobs)
        # Decoding a 40 MP image takes ~160 MB for a moment: a few at a time, whatever the core count.
        self._validator = RequestValidator(max_decodes=min(4, max(2, os.cpu_count() or 2)))
        self._accepting = True
        self._closing = asyncio.Event()
        self._background: set[asyncio.Task[None]] = set()

    async def start(self) -> None:
        """Connects the store and starts running jobs."""
        await self.store.start(self.dispatcher.on_cancel)
        self.dispatcher.start()

    @property
    def active_jobs(self) -> int:
        """Jobs running on this gateway."""
        return self.dispatcher.running

    async def submit(self, request: gateway_pb2.JobRequest) -> tuple[str, bool]:
        """Validates, stores and queues a job; returns (job id, created).

        The same idempotency key with the same request returns the job it made
        (``created`` False); with a different request it is refused
        (ALREADY_EXISTS). Raises InvalidInput, ResourceExhausted or Unavailable.
        """
        if not self._accepting:
            raise Unavailable(f"{SHUTDOWN_MESSAGE}; submit to another replica")
        key = request.idempotency_key
        digest = await asyncio.to_thread(fingerprint, request) if key else ""
        try:
            if key:
                existing = await self.store.find(key)
                if existing is not None:
                    return _same_request(key, digest, *existing), False
            spec = await self._validator.validate(request)
            spec.traceparent = tracing.current_traceparent()
            await self._check_against_upstreams(spec)
            place = await self.store.place_for_new_job()
            if place is None:
                raise ResourceExhausted("facegen is at capacity; retry later")
            job_id = uuid.uuid4().hex
            images = await self._make_durable(job_id, spec)
            first = _first_event(job_id, place)
            created = await self.store.create(NewJob(job_id, spec, first, key, digest, images))
        except StoreUnavailable as exc:
            logs.event(log, "job.store_unavailable", logging.WARNING, error=exc)
            raise Unavailable(STORE_DOWN) from None
        if not created.created:
            # Another submit with the same key won the race while this one was being validated.
            existing = await self.store.find(key)
            return _same_request(key, digest, *(existing or (created.job_id, digest))), False
        self.metrics.jobs_submitted.labels(mode=spec.mode).inc()
        with logs.job_context(job_id):
            logs.event(log, "job.submitted", caller=caller_var.get(), **spec.summary)
        if self._shared:
            # Stored and queued already: if this claim fails, a claim loop takes the job later.
            with contextlib.suppress(StoreUnavailable):
                await self.dispatcher.claim_now()
        return job_id, True

    async def _check_against_upstreams(self, spec: JobSpec) -> None:
        """What only the generator's catalog and storage can tell: the model's own limits, and
        whether a reference key names a stored face (InvalidInput or NotFound)."""
        if spec.generate is not None:
            models = await self._models.models()
            if models is not None:
                model = find_model(spec.generate.model, models)
                settle(spec.generate, model)
                check_lora(spec.generate, model)
        if spec.reference_key:
            await self._upstreams.check_reference("-", spec.reference_key)

    async def _make_durable(self, job_id: str, spec: JobSpec) -> dict[int, ImageCheckpoint]:
        """Fixes the seed and, with a shared store, stores the images the job needs.

        Returns the checkpoints that say so (a template's target is image 0, stored).
        """
        if spec.generate is not None and (not spec.generate.HasField("seed") or spec.generate.seed == -1):
            spec.generate.seed = secrets.randbelow(RANDOM_SEED_LIMIT)
        if not self._shared:
            return {}
        if spec.reference_image is not None:
            spec.reference_key = await self._upstreams.put_reference(job_id, spec.reference_image)
            spec.reference_image = None
        if spec.target_image is None:
            return {}
        key = await self._upstreams.put_target(job_id, 0, spec.target_image)
        spec.target_image = None
        return {0: ImageCheckpoint(stored_key=key)}

    async def cancel(self, job_id: str, reason: str) -> gateway_pb2.JobState:
        """Cancels a job wherever it runs and waits (briefly) for its terminal event; returns its state."""
        job = await self.get(job_id)
        if job.state in TERMINAL_STATES:
            return job.state
        await self.request_cancel(job_id, reason)
        try:
            async with asyncio.timeout(CANCEL_WAIT_SECONDS), aclosing(self.store.watch(job_id, job.last_seq)) as events:
                async for event in events:
                    if event.stage == gateway_pb2.STAGE_TERMINAL:
                        break
        except TimeoutError:
            pass
        except StoreUnavailable:
            raise Unavailable(STORE_DOWN) from None
        return (await self.get(job_id)).state

    async def request_cancel(self, job_id: str, reason: str) -> None:
        """Asks a job to stop without waiting; NotFound when it is unknown."""
        try:
            lease = await self.store.request_cancel(job_id, reason, self.settings.instance)
        except StoreUnavailable:
            raise Unavailable(STORE_DOWN) from None
        if lease is not None:
            # It was still queued: it is ours now, and ends at once as CANCELLED.
            self.dispatcher.adopt(lease)

    def cancel_soon(self, job_id: str, reason: str) -> None:
        """Asks a job to stop from a context that cannot wait (a stream being torn down)."""
        task = asyncio.create_task(self._cancel_quietly(job_id, reason))
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    async def _cancel_quietly(self, job_id: str, reason: str) -> None:
        try:
            await self.request_cancel(job_id, reason)
        except (NotFound, Unavailable) as exc:
            with logs.job_context(job_id):
                logs.event(log, "job.cancel_failed", logging.WARNING, error=exc)

    async def get(self, job_id: str) -> gateway_pb2.Job:
        """The job's snapshot; NotFound when unknown or expired."""
        _check_job_id(job_id)
        try:
            job = await self.store.get(job_id)
        except StoreUnavailable:
            raise Unavailable(STORE_DOWN) from None
        if job is None:
            raise NotFound(f"job {job_id!r} not found (ended jobs are kept for "
                           f"{self.settings.job_ttl_seconds:g} s)")
        return job

    async def watch(self, job_id: str, after_seq: int) -> AsyncIterator[gateway_pb2.JobEvent]:
        """The job's events after ``after_seq``, then live ones until the terminal event.

        When this gateway stops, the stream ends with UNAVAILABLE naming the
        last seq sent, so the client re-attaches to another replica from there.
        """
        _check_job_id(job_id)
        last = after_seq
        events = self.store.watch(job_id, after_seq)
        closing = asyncio.ensure_future(self._closing.wait())
        step: asyncio.Future[gateway_pb2.JobEvent] | None = None
        delivered = self.metrics.events_delivered
        self.metrics.watch_streams.inc()
        try:
            while True:
                step = asyncio.ensure_future(anext(events))
                await asyncio.wait({step, closing}, return_when=asyncio.FIRST_COMPLETED)
                if not step.done():
                    raise Unavailable(f"{SHUTDOWN_MESSAGE}; watch again from after_seq={last} "
                                      "on another replica")
                try:
                    event = step.result()
                except StopAsyncIteration:
                    return
                except StoreUnavailable:
                    raise Unavailable(f"{STORE_DOWN} (watch again from after_seq={last})") from None
                last = event.seq
                yield event
                delivered.inc()
                if event.stage == gateway_pb2.STAGE_TERMINAL:
                    return
        finally:
            self.metrics.watch_streams.dec()
            closing.cancel()
            if step is not None and not step.done():
                # The store's generator is suspended in that task: stop it there before closing it.
                step.cancel()
                await asyncio.gather(step, return_exceptions=True)
            await events.aclose()

    async def drain(self) -> None:
        """SIGTERM: stop taking work, let running jobs go on, then hand over or cancel the rest.

        With a shared store new jobs are still accepted (another replica runs
        them); Watch streams end with UNAVAILABLE once the running jobs are
        handed over, so that their clients re-attach elsewhere.
        """
        if not self._shared:
            self._accepting = False
        await self.dispatcher.drain(self.settings.drain_seconds)
        if self._shared:
            self._closing.set()

    async def shutdown(self) -> None:
        """Stops every job of this gateway (released or cancelled) and disconnects the store."""
        self._accepting = False
        await self.dispatcher.close()
        self._closing.set()
        await self.store.close()

    @property
    def job_store_healthy(self) -> bool:
        """False while the store cannot be reached."""
        return self.store.healthy


def _first_event(job_id: str, ahead: int) -> gateway_pb2.JobEvent:
    message = f"waiting for a free slot ({ahead} jobs ahead)" if ahead >= 0 else "accepted"
    event = gateway_pb2.JobEvent(job_id=job_id, seq=1, stage=gateway_pb2.STAGE_QUEUED,
                                 message=message, image_index=-1, queue_position=max(0, ahead))
    event.time.GetCurrentTime()
    return event


def _same_request(key: str, digest: str, job_id: str, existing_digest: str) -> str:
    if existing_digest != digest:
        raise AlreadyExists(f"idempotency key {key!r} was used for job {job_id} with a different request; "
                            "use a new key for a new job")
    return job_id


def _check_job_id(job_id: str) -> None:
    if not job_id:
        raise InvalidInput("job_id is required")
    if len(job_id) > MAX_NAME_CHARS:
        raise InvalidInput(f"job_id must be at most {MAX_NAME_CHARS} characters")

