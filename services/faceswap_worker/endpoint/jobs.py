"""The job store and state machine: IN_QUEUE → IN_PROGRESS → COMPLETED | FAILED | CANCELLED | TIMED_OUT."""

from __future__ import annotations

import collections
import threading
import time
import uuid
from dataclasses import dataclass, field
from typing import Any

from services.faceswap_worker.endpoint import log

IN_QUEUE, IN_PROGRESS = "IN_QUEUE", "IN_PROGRESS"
COMPLETED, FAILED, CANCELLED, TIMED_OUT = "COMPLETED", "FAILED", "CANCELLED", "TIMED_OUT"
TERMINAL = frozenset({COMPLETED, FAILED, CANCELLED, TIMED_OUT})


class QueueFull(Exception):
    """The queue holds its limit of jobs (HTTP 429)."""


class JobNotFound(Exception):
    """Unknown, purged or expired job id (HTTP 404)."""


class NotRetryable(Exception):
    """Retry of a job that is not FAILED or TIMED_OUT (HTTP 400)."""


@dataclass
class Job:
    """One submitted job. Times are time.monotonic() seconds."""

    id: str
    input: Any
    execution_timeout_s: float
    ttl_s: float
    retention_s: float
    fate: str | None = None  # fault injection: None, "fail" or "hang"
    status: str = IN_QUEUE
    submitted_at: float = field(default_factory=time.monotonic)
    started_at: float | None = None
    finished_at: float | None = None
    output: Any = None
    error: str | None = None
    worker_id: str | None = None
    version: int = 0  # bumped on every change
    attempt: int = 0  # bumped by retry; a worker's late result for an old attempt is dropped
    changed: threading.Condition | None = None  # on the store's lock; notified on every change

    def delay_ms(self, now: float) -> int:
        end = self.started_at if self.started_at is not None else (self.finished_at or now)
        return round((end - self.submitted_at) * 1000)

    def execution_ms(self, now: float) -> int:
        if self.started_at is None:
            return 0
        return round(((self.finished_at or now) - self.started_at) * 1000)

    def to_status(self, now: float | None = None) -> dict[str, Any]:
        """The body of GET /status/{id}, shaped like RunPod's."""
        now = time.monotonic() if now is None else now
        body: dict[str, Any] = {"id": self.id, "status": self.status}
        if self.started_at is not None or self.status in TERMINAL:
            body["delayTime"] = self.delay_ms(now)
        if self.started_at is not None:
            body["executionTime"] = self.execution_ms(now)
        if self.worker_id:
            body["workerId"] = self.worker_id
        if self.status == COMPLETED and self.output is not None:
            body["output"] = self.output
        if self.error is not None and self.status in (FAILED, TIMED_OUT, CANCELLED):
            body["error"] = self.error
        return body


@dataclass(frozen=True)
class StoreLimits:
    """Defaults of the endpoint (a submit's policy may override timeout and ttl)."""

    max_queue: int = 1000
    execution_timeout_s: float = 600.0
    ttl_s: float = 86400.0
    retention_s: float = 1800.0  # results of /run jobs
    runsync_retention_s: float = 60.0  # results of /runsync jobs


class JobStore:
    """Thread-safe jobs, queue, counters and change notification."""

    def __init__(self, limits: StoreLimits) -> None:
        self.limits = limits
        self._lock = threading.Lock()
        self._queue_ready = threading.Condition(self._lock)
        self._jobs: dict[str, Job] = {}
        self._queue: collections.deque[str] = collections.deque()
        self.counters = {"completed": 0, "failed": 0, "retried": 0}
        self._closed = False

    # -- submission -------------------------------------------------------------------------
    def submit(self, job_input: Any, policy: dict[str, Any], fate: str | None, sync: bool) -> Job:
        """Queue a job; raises QueueFull at the limit."""
        timeout_ms = policy.get("executionTimeout")
        ttl_ms = policy.get("ttl")
        job = Job(
            id=f"{uuid.uuid4()}-u1",
            input=job_input,
            execution_timeout_s=(timeout_ms / 1000.0) if timeout_ms else self.limits.execution_timeout_s,
            ttl_s=(ttl_ms / 1000.0) if ttl_ms else self.limits.ttl_s,
            retention_s=self.limits.runsync_retention_s if sync else self.limits.retention_s,
            fate=fate,
        )
        job.changed = threading.Condition(self._lock)
        with self._lock:
            if len(self._queue) >= self.limits.max_queue:
                raise QueueFull(f"queue is full ({self.limits.max_queue} jobs)")
            self._jobs[job.id] = job
            self._queue.append(job.id)
            self._queue_ready.notify()
        log.event("job.queued", id=job.id, sync=sync, fate=fate, queue=len(self._queue))
        return job

    def get(self, job_id: str) -> Job:
        with self._lock:
            return self._get(job_id)

    def _get(self, job_id: str) -> Job:
        job = self._jobs.get(job_id)
        if job is None:
            raise JobNotFound(job_id)
        return job

    def snapshot(self, job_id: str) -> dict[str, Any]:
        """The job's status body (raises JobNotFound)."""
        with self._lock:
            return self._get(job_id).to_status()

    # -- workers ----------------------------------------------------------------------------
    def take(self, worker_id: str, timeout: float) -> tuple[Job, int] | None:
        """The next queued job, now IN_PROGRESS on ``worker_id`` (with its attempt number), or None."""
        deadline = time.monotonic() + timeout
        with self._lock:
            while not self._queue and not self._closed:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    return None
                self._queue_ready.wait(remaining)
            if self._closed:
                return None
            job = self._jobs[self._queue.popleft()]
            job.status, job.started_at, job.worker_id = IN_PROGRESS, time.monotonic(), worker_id
            self._bump(job)
            attempt = job.attempt
        log.event("job.started", id=job.id, worker=worker_id, delay_ms=job.delay_ms(time.monotonic()))
        return job, attempt

    def finish(self, job_id: str, attempt: int, status: str, output: Any = None, error: str | None = None) -> bool:
        """Record a worker's result; False when the job already ended (cancelled, timed out) or was retried."""
        with self._lock:
            job = self._jobs.get(job_id)
            if job is None or job.attempt != attempt or job.status != IN_PROGRESS:
                return False
            self._end(job, status, output, error)
        log.event("job.finished", id=job_id, status=status, execution_ms=job.execution_ms(time.monotonic()),
                  error=error)
        return True

    def is_active(self, job_id: str, attempt: int) -> bool:
        """Whether the worker should keep running this attempt."""
        with self._lock:
            return self._active(job_id, attempt)

    def _active(self, job_id: str, attempt: int) -> bool:
        job = self._jobs.get(job_id)
        return job is not None and job.attempt == attempt and job.status == IN_PROGRESS

    def wait_inactive(self, job_id: str, attempt: int, timeout: float) -> bool:
        """Wait up to ``timeout`` for the attempt to end (cancel, timeout, purge); True if it is still active."""
        deadline = time.monotonic() + timeout
        with self._lock:
            job = self._jobs.get(job_id)
            while job is not None and job.changed is not None and self._active(job_id, attempt) and not self._closed:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    break
                job.changed.wait(remaining)
            return self._active(job_id, attempt) and not self._closed

    def _end(self, job: Job, status: str, output: Any, error: str | None) -> None:
        job.status, job.output, job.error = status, output, error
        job.finished_at = time.monotonic()
        if status == COMPLETED:
            self.counters["completed"] += 1
        elif status in (FAILED, TIMED_OUT):
            self.counters["failed"] += 1
        self._bump(job)

    def _bump(self, job: Job) -> None:
        job.version += 1
        if job.changed is not None:
            job.changed.notify_all()

    # -- client operations ------------------------------------------------------------------
    def cancel(self, job_id: str) -> dict[str, Any]:
        """Cancel a queued or running job; a finished job is left as it is."""
        with self._lock:
            job = self._get(job_id)
            if job.status == IN_QUEUE:
                self._queue.remove(job.id)
            if job.status not in TERMINAL:
                self._end(job, CANCELLED, None, None)
                changed = True
            else:
                changed = False
            body = {"id": job.id, "status": job.status}
        if changed:
            log.event("job.cancelled", id=job_id)
        return body

    def retry(self, job_id: str) -> dict[str, Any]:
        """Queue a FAILED or TIMED_OUT job again under the same id."""
        with self._lock:
            job = self._get(job_id)
            if job.status not in (FAILED, TIMED_OUT):
                raise NotRetryable(f"only FAILED or TIMED_OUT jobs can be retried; this one is {job.status}")
            if len(self._queue) >= self.limits.max_queue:
                raise QueueFull(f"queue is full ({self.limits.max_queue} jobs)")
            job.attempt += 1
            job.status, job.output, job.error, job.fate = IN_QUEUE, None, None, None
            job.submitted_at, job.started_at, job.finished_at, job.worker_id = time.monotonic(), None, None, None
            self.counters["retried"] += 1
            self._queue.append(job.id)
            self._bump(job)
            self._queue_ready.notify()
        log.event("job.retried", id=job_id, attempt=job.attempt)
        return {"id": job_id, "status": IN_QUEUE}

    def purge_queue(self) -> int:
        """Remove every queued (not running) job; they are forgotten like RunPod's purge."""
        with self._lock:
            removed = list(self._queue)
            self._queue.clear()
            for job_id in removed:
                job = self._jobs.pop(job_id)
                self._bump(job)
        log.event("queue.purged", removed=len(removed))
        return len(removed)

    def wait_change(self, job_id: str, timeout: float, until_terminal: bool = False) -> dict[str, Any]:
        """Hold until the job's status changes (or it ends, with ``until_terminal``) or ``timeout`` passes."""
        deadline = time.monotonic() + timeout
        with self._lock:
            job = self._get(job_id)
            start_status = job.status
            while job.status not in TERMINAL and (until_terminal or job.status == start_status):
                remaining = deadline - time.monotonic()
                if remaining <= 0 or self._closed or job.changed is None:
                    break
                job.changed.wait(remaining)
                job = self._get(job_id)
            return job.to_status()

    def counts(self) -> dict[str, int]:
        """Queue and progress counts for /health."""
        with self._lock:
            in_progress = sum(1 for j in self._jobs.values() if j.status == IN_PROGRESS)
            return {
                "completed": self.counters["completed"],
                "failed": self.counters["failed"],
                "inProgress": in_progress,
                "inQueue": len(self._queue),
                "retried": self.counters["retried"],
            }

    # -- housekeeping -----------------------------------------------------------------------
    def sweep(self) -> None:
        """Time out jobs past their ttl or executionTimeout; forget results past their retention."""
        now = time.monotonic()
        expired: list[tuple[str, str]] = []
        with self._lock:
            for job in list(self._jobs.values()):
                if job.status in TERMINAL:
                    if job.finished_at is not None and now - job.finished_at > job.retention_s:
                        del self._jobs[job.id]
                        expired.append((job.id, "result.expired"))
                    continue
                if now - job.submitted_at > job.ttl_s:
                    reason = f"job exceeded its ttl of {job.ttl_s * 1000:.0f} ms"
                elif job.started_at is not None and now - job.started_at > job.execution_timeout_s:
                    reason = f"job exceeded its execution timeout of {job.execution_timeout_s * 1000:.0f} ms"
                else:
                    continue
                if job.status == IN_QUEUE:
                    self._queue.remove(job.id)
                self._end(job, TIMED_OUT, None, reason)
                expired.append((job.id, "job.timed_out"))
        for job_id, name in expired:
            log.event(name, id=job_id)

    def close(self) -> None:
        """Wake every waiter; workers stop taking jobs."""
        with self._lock:
            self._closed = True
            self._queue_ready.notify_all()
            for job in self._jobs.values():
                if job.changed is not None:
                    job.changed.notify_all()
