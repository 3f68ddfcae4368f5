"""Creates, runs, cancels and forgets jobs: the gateway's behaviour without gRPC."""

from __future__ import annotations

import asyncio
import logging
import os
import uuid
from collections.abc import AsyncIterator

from facegen.v1 import gateway_pb2
from services.common import logs
from services.common.errors import InvalidInput, NotFound
from services.gateway.admission import Admission
from services.gateway.orchestrator import JobRun, Services
from services.gateway.settings import Settings
from services.gateway.store import InMemoryJobStore, JobStore
from services.gateway.upstreams import Upstreams
from services.gateway.validation import MAX_NAME_CHARS, RequestValidator

log = logging.getLogger(__name__)

# How long Cancel waits for a job to reach its terminal event before answering.
CANCEL_WAIT_SECONDS = 5.0


class JobManager:
    """Owns the jobs running in this process and the store their events go to."""

    def __init__(self, settings: Settings, upstreams: Upstreams, store: JobStore | None = None) -> None:
        self.settings = settings
        self.store = store or InMemoryJobStore(settings.job_ttl_seconds, settings.max_jobs,
                                               settings.max_events_per_job)
        self.admission = Admission(settings.max_running_jobs, settings.max_queued_jobs)
        self._services = Services(settings, self.store, upstreams, self.admission)
        # Decoding a 40 MP image takes ~160 MB for a moment: a few at a time, whatever the core count.
        self._validator = RequestValidator(max_decodes=min(4, max(2, os.cpu_count() or 2)))
        self._runs: dict[str, JobRun] = {}
        self._tasks: dict[str, asyncio.Task[None]] = {}

    @property
    def active_jobs(self) -> int:
        """Jobs of this process that have not ended."""
        return len(self._runs)

    async def submit(self, request: gateway_pb2.JobRequest) -> tuple[str, bool]:
        """Validates and starts a job; returns (job id, created). Raises InvalidInput or ResourceExhausted.

        A request whose idempotency key names a kept job returns that job without
        validating again.
        """
        key = request.idempotency_key
        if key:
            existing = await self.store.find(key)
            if existing is not None:
                return existing, False
        spec = await self._validator.validate(request)
        self.admission.reserve()
        # This job was admitted last, so every other job in the backlog is ahead of it.
        queue_ahead = self.admission.backlog - 1
        try:
            job_id, created = await self.store.create(uuid.uuid4().hex, key)
        except BaseException:
            self.admission.release_unused()
            raise
        if not created:
            # Another submit with the same key won the race while this one was being validated.
            self.admission.release_unused()
            return job_id, False
        run = JobRun(job_id, spec, self._services, queue_ahead)
        # Nothing is awaited from here on, so the job cannot be left without its task.
        with logs.job_context(job_id):
            logs.event(log, "job.submitted", **spec.summary)
            task = run.start()
        self._runs[job_id] = run
        self._tasks[job_id] = task
        task.add_done_callback(lambda _task: self._forget(job_id))
        return job_id, True

    def _forget(self, job_id: str) -> None:
        self._runs.pop(job_id, None)
        self._tasks.pop(job_id, None)

    def request_cancel(self, job_id: str, reason: str) -> bool:
        """Asks a job of this process to stop; returns False when it is not running here."""
        run = self._runs.get(job_id)
        if run is None:
            return False
        run.cancel(reason)
        return True

    async def cancel(self, job_id: str, reason: str) -> gateway_pb2.JobState:
        """Cancels a job and waits (briefly) for its terminal event; returns its state after."""
        _check_job_id(job_id)
        task = self._tasks.get(job_id)
        if self.request_cancel(job_id, reason) and task is not None:
            await asyncio.wait({task}, timeout=CANCEL_WAIT_SECONDS)
        job = await self.store.get(job_id)
        if job is None:
            raise NotFound(f"job {job_id!r} not found")
        return job.state

    async def get(self, job_id: str) -> gateway_pb2.Job:
        """The job's snapshot; NotFound when unknown or expired."""
        _check_job_id(job_id)
        job = await self.store.get(job_id)
        if job is None:
            raise NotFound(f"job {job_id!r} not found (ended jobs are kept for "
                           f"{self.settings.job_ttl_seconds:g} s)")
        return job

    def watch(self, job_id: str, after_seq: int) -> AsyncIterator[gateway_pb2.JobEvent]:
        """The job's events after ``after_seq``, then live ones until the terminal event."""
        _check_job_id(job_id)
        return self.store.watch(job_id, after_seq)

    async def shutdown(self) -> None:
        """Cancels every job of this process and waits for their terminal events."""
        tasks = list(self._tasks.values())
        for run in list(self._runs.values()):
            run.cancel("the gateway is shutting down")
        if tasks:
            await asyncio.wait(tasks, timeout=CANCEL_WAIT_SECONDS)


def _check_job_id(job_id: str) -> None:
    if not job_id:
        raise InvalidInput("job_id is required")
    if len(job_id) > MAX_NAME_CHARS:
        raise InvalidInput(f"job_id must be at most {MAX_NAME_CHARS} characters")
