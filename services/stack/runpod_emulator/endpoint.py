"""One emulated endpoint: its queue and jobs, its limits, its faults, and the runner that executes its jobs.

Everything here runs on the emulator's event loop, except the attribute reads and
writes of the control API (plans, scripted faults), which are single assignments.
"""

from __future__ import annotations

import asyncio
import collections
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol

from services.stack.runpod_emulator import log
from services.stack.runpod_emulator.faults import Fault, FaultState
from services.stack.runpod_emulator.jobs import (
    ACTIVE,
    CANCELLED,
    COMPLETED,
    FAILED,
    IN_PROGRESS,
    IN_QUEUE,
    NO_OUTPUT,
    TERMINAL,
    TIMED_OUT,
    Job,
    JobPlan,
    PlanSource,
)


class QueueFull(Exception):
    """The queue holds its limit of jobs (HTTP 429)."""


class JobNotFound(Exception):
    """Unknown, purged or expired job id (HTTP 404)."""


class NotRetryable(Exception):
    """Retry of a job that is not FAILED or TIMED_OUT (HTTP 400)."""


@dataclass(frozen=True)
class Limits:
    """An endpoint's defaults (a submission's policy may override timeout and ttl)."""

    max_queue: int = 1000
    execution_timeout_s: float = 600.0
    ttl_s: float = 86400.0
    retention_s: float = 1800.0  # results of /run jobs stay readable this long
    runsync_retention_s: float = 60.0  # and those of /runsync jobs
    # RunPod's documented minimums; a smaller policy value is raised to them.
    min_execution_timeout_s: float = 5.0
    min_ttl_s: float = 10.0


class Runner(Protocol):
    """What executes an endpoint's jobs: scripted timelines or worker processes."""

    def bind(self, endpoint: Endpoint) -> None:
        """Called once, when the runner is given to its endpoint."""

    def queued(self, job: Job) -> None:
        """A job entered the queue (a new one, or one retried)."""

    def ended(self, job: Job) -> None:
        """A queued or running job was ended from outside (cancel, timeout, purge): stop working on it."""

    def ready(self) -> bool:
        """Whether the endpoint can serve (every initial worker started)."""

    def workers(self) -> dict[str, int]:
        """Worker counts for ``/health``."""

    async def start(self) -> None:
        """Start on the emulator's loop."""

    async def stop(self) -> None:
        """Stop, ending every process started."""


class Endpoint:
    """An endpoint id with its jobs, queue, counters, faults and runner."""

    def __init__(self, endpoint_id: str, runner: Runner, limits: Limits | None = None) -> None:
        self.id = endpoint_id
        self.limits = limits or Limits()
        self.runner = runner
        self.plan: PlanSource = JobPlan()  # scripted endpoints: how new jobs run
        self.supports_wait = True  # False: ?wait= is ignored, /status answers at once
        self.health_body: dict[str, Any] | None = None  # a fixed /health answer instead of the counts
        self.faults = FaultState()
        self.jobs: dict[str, Job] = {}
        self.queue: collections.deque[Job] = collections.deque()
        self.counters = {"completed": 0, "failed": 0, "retried": 0}
        # For the metrics: jobs submitted, and jobs ended by final status.
        self.submitted = 0
        self.ended: collections.Counter[str] = collections.Counter()
        self._scripted: dict[str, collections.deque[list[Any]]] = {}
        runner.bind(self)

    # ---- scripted answers (control API) ----

    def script(self, route: str, fault: Fault, times: int | None = 1) -> Endpoint:
        """The next ``times`` requests on ``route`` get ``fault`` (None: every request from now on)."""
        self._scripted.setdefault(route, collections.deque()).append([fault, times])
        return self

    def clear(self, route: str | None = None) -> None:
        """Drop the scripted faults (of one route, or all)."""
        if route is None:
            self._scripted.clear()
        else:
            self._scripted.pop(route, None)

    def next_fault(self, route: str) -> Fault | None:
        """Consume the next scripted fault for ``route``."""
        queue = self._scripted.get(route)
        if not queue:
            return None
        entry = queue[0]
        fault, times = entry
        if times is not None:
            entry[1] = times - 1
            if entry[1] <= 0:
                queue.popleft()
        return fault

    def plan_for(self, job_input: Any) -> JobPlan:
        """The plan of a new scripted job."""
        return self.plan(job_input) if callable(self.plan) else self.plan

    # ---- the queue API ----

    def submit(self, job_input: Any, policy: dict[str, Any], sync: bool, raw_policy: Any = None) -> Job:
        """Queue a job; raises QueueFull at the limit."""
        if len(self.queue) >= self.limits.max_queue:
            raise QueueFull(f"queue is full ({self.limits.max_queue} jobs)")
        limits = self.limits
        timeout_ms, ttl_ms = policy.get("executionTimeout"), policy.get("ttl")
        job = Job(
            id=f"{uuid.uuid4()}-u1", endpoint_id=self.id, input=job_input, policy=raw_policy,
            execution_timeout_s=max(limits.min_execution_timeout_s, timeout_ms / 1000.0) if timeout_ms
            else limits.execution_timeout_s,
            ttl_s=max(limits.min_ttl_s, ttl_ms / 1000.0) if ttl_ms else limits.ttl_s,
            retention_s=self.limits.runsync_retention_s if sync else self.limits.retention_s,
            fate=self.faults.for_job(),
        )
        self.jobs[job.id] = job
        self.submitted += 1
        self._enqueue(job)
        log.event("job.queued", endpoint=self.id, id=job.id, sync=sync, fate=job.fate, queue=len(self.queue))
        return job

    def _enqueue(self, job: Job) -> None:
        self.queue.append(job)
        attempt = job.attempt
        reason = f"job exceeded its ttl of {job.ttl_s * 1000:.0f} ms"
        self._later(job, job.ttl_s, lambda: self._expire(job, attempt, reason))
        self.runner.queued(job)

    def get(self, job_id: str) -> Job:
        """A job by id (raises JobNotFound)."""
        job = self.jobs.get(job_id)
        if job is None:
            raise JobNotFound(job_id)
        return job

    def cancel(self, job_id: str) -> dict[str, Any]:
        """Cancel a queued or running job; a finished job keeps its status."""
        job = self.get(job_id)
        if job.status in ACTIVE:
            job.cancelled_at = time.monotonic()
            self._end_from_outside(job, CANCELLED, None)
            log.event("job.cancelled", endpoint=self.id, id=job.id)
        return {"id": job.id, "status": job.status}

    def retry(self, job_id: str) -> dict[str, Any]:
        """Queue a FAILED or TIMED_OUT job again under the same id."""
        job = self.get(job_id)
        if job.status not in (FAILED, TIMED_OUT):
            raise NotRetryable(f"only FAILED or TIMED_OUT jobs can be retried; this one is {job.status}")
        if len(self.queue) >= self.limits.max_queue:
            raise QueueFull(f"queue is full ({self.limits.max_queue} jobs)")
        for timer in job.timers:
            timer.cancel()
        job.attempt, job.timers = job.attempt + 1, []
        job.status, job.error, job.fate, job.worker_id = IN_QUEUE, None, None, None
        job.submitted_at, job.started_at, job.finished_at, job.cancelled_at = time.monotonic(), None, None, None
        job.output = NO_OUTPUT
        self.counters["retried"] += 1
        job.notify()
        self._enqueue(job)
        log.event("job.retried", endpoint=self.id, id=job.id, attempt=job.attempt)
        return {"id": job.id, "status": IN_QUEUE}

    def purge_queue(self) -> int:
        """Remove every queued (not running) job; they are forgotten, as on RunPod."""
        removed = list(self.queue)
        self.queue.clear()
        for job in removed:
            del self.jobs[job.id]
            for timer in job.timers:
                timer.cancel()
            self.runner.ended(job)
            job.notify()
        log.event("queue.purged", endpoint=self.id, removed=len(removed))
        return len(removed)

    async def wait_change(self, job_id: str, timeout_s: float, until_terminal: bool = False) -> dict[str, Any]:
        """Hold until the job's status changes (or it ends, with ``until_terminal``) or ``timeout_s`` passes."""
        job = self.get(job_id)
        first = job.status
        deadline = time.monotonic() + timeout_s
        while job.status not in TERMINAL and (until_terminal or job.status == first):
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                break
            try:
                await asyncio.wait_for(job.changed.wait(), remaining)
            except TimeoutError:
                break
            job = self.get(job_id)  # purged meanwhile: 404
        return job.to_status()

    def health(self) -> tuple[int, dict[str, Any]]:
        """(HTTP status, body) of ``/health``: 503 until the runner is ready."""
        if self.health_body is not None:
            return 200, self.health_body
        in_progress = sum(1 for job in self.jobs.values() if job.status == IN_PROGRESS)
        body = {
            "jobs": {"completed": self.counters["completed"], "failed": self.counters["failed"],
                     "inProgress": in_progress, "inQueue": len(self.queue), "retried": self.counters["retried"]},
            "workers": self.runner.workers(),
        }
        return (200 if self.runner.ready() else 503), body

    # ---- called by runners ----

    def start(self, job: Job, worker_id: str, at: float | None = None) -> int:
        """The job leaves the queue and runs on ``worker_id`` (since ``at``, default now); returns its attempt."""
        self.queue.remove(job)
        job.status, job.started_at, job.worker_id = IN_PROGRESS, at or time.monotonic(), worker_id
        job.notify()
        attempt = job.attempt
        reason = f"job exceeded its execution timeout of {job.execution_timeout_s * 1000:.0f} ms"
        self._later(job, job.execution_timeout_s, lambda: self._expire(job, attempt, reason))
        log.event("job.started", endpoint=self.id, id=job.id, worker=worker_id,
                  delay_ms=round((job.started_at - job.submitted_at) * 1000))
        return attempt

    def is_active(self, job: Job, attempt: int) -> bool:
        """Whether a runner should keep working on this attempt of the job."""
        return job.attempt == attempt and job.status == IN_PROGRESS and self.jobs.get(job.id) is job

    def finish(self, job: Job, attempt: int, status: str, output: Any, error: Any = None,
               at: float | None = None) -> bool:
        """Record a runner's result (reached at ``at``, default now); False when the attempt already ended."""
        if not self.is_active(job, attempt):
            return False
        self._end(job, status, output, error, at)
        log.event("job.finished", endpoint=self.id, id=job.id, status=status, error=error,
                  execution_ms=round((time.monotonic() - (job.started_at or job.submitted_at)) * 1000))
        return True

    # ---- internals ----

    def _end(self, job: Job, status: str, output: Any, error: Any, at: float | None = None) -> None:
        job.status, job.output, job.error = status, output, error
        job.finished_at = at or time.monotonic()
        self.ended[status] += 1
        if status == COMPLETED:
            self.counters["completed"] += 1
        elif status in (FAILED, TIMED_OUT):
            self.counters["failed"] += 1
        job.notify()
        for timer in job.timers:  # the ttl and execution timeout no longer apply
            timer.cancel()
        attempt = job.attempt
        job.timers = [asyncio.get_running_loop().call_later(job.retention_s, lambda: self._forget(job, attempt))]

    def _end_from_outside(self, job: Job, status: str, error: str | None) -> None:
        if job.status == IN_QUEUE:
            self.queue.remove(job)
        self._end(job, status, NO_OUTPUT, error)
        self.runner.ended(job)

    def _expire(self, job: Job, attempt: int, reason: str) -> None:
        if job.attempt == attempt and job.status in ACTIVE and self.jobs.get(job.id) is job:
            self._end_from_outside(job, TIMED_OUT, reason)
            log.event("job.timed_out", endpoint=self.id, id=job.id, reason=reason)

    def _forget(self, job: Job, attempt: int) -> None:
        if job.attempt == attempt and job.status in TERMINAL and self.jobs.get(job.id) is job:
            del self.jobs[job.id]
            log.event("result.expired", endpoint=self.id, id=job.id)

    @staticmethod
    def _later(job: Job, delay_s: float, callback: Callable[[], None]) -> None:
        job.timers.append(asyncio.get_running_loop().call_later(delay_s, callback))
