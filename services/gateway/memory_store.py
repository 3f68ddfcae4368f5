"""The job store of a single gateway process, in its own memory.

Bounded like the Redis store: finished jobs are dropped ``ttl`` seconds after
they end, at most ``max_jobs`` jobs are kept (the oldest finished go first),
each job keeps at most ``max_events`` events, and only the newest preview
image is kept. Leases never run out: there is no other gateway to take a job
over.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections import OrderedDict, deque
from collections.abc import AsyncGenerator, Callable, Sequence

from facegen.v1 import gateway_pb2
from services.common.errors import NotFound, ResourceExhausted
from services.common.tracing import trace_id_of
from services.gateway.admission import AdmissionLimits
from services.gateway.store import (
    TERMINAL_STATES,
    CancelListener,
    Created,
    ImageCheckpoint,
    JobStore,
    Lease,
    LeaseLost,
    NewJob,
)
from services.gateway.validation import JobSpec


class _Entry:
    # Events are kept serialised: ~130 bytes each instead of ~900 for a live message.
    __slots__ = ("cancel_reason", "changed", "epoch", "events", "fingerprint", "finished", "first_seq",
                 "idempotency_key", "images", "job", "last_has_preview", "owner", "spec")

    def __init__(self, job: NewJob) -> None:
        self.job = gateway_pb2.Job(job_id=job.job_id, state=gateway_pb2.JOB_STATE_QUEUED,
                                   stage=gateway_pb2.STAGE_QUEUED, trace_id=trace_id_of(job.spec.traceparent))
        self.job.created_at.GetCurrentTime()
        self.spec: JobSpec = job.spec
        self.idempotency_key = job.idempotency_key
        self.fingerprint = job.fingerprint
        self.events: list[bytes] = []
        self.first_seq = 1
        self.changed = asyncio.Event()
        self.finished = False
        self.last_has_preview = False
        self.images: dict[int, ImageCheckpoint] = {index: _copy(point) for index, point in job.images.items()}
        self.cancel_reason: str | None = None
        self.owner = ""
        self.epoch = 0

    def events_after(self, seq: int) -> list[bytes]:
        start = max(0, seq + 1 - self.first_seq)
        return self.events[start:]

    def add(self, event: gateway_pb2.JobEvent, state: gateway_pb2.JobState) -> None:
        if self.last_has_preview:
            # Only the newest preview is worth keeping for watchers that lag behind.
            stripped = gateway_pb2.JobEvent.FromString(self.events[-1])
            stripped.denoise.preview_png = b""
            self.events[-1] = stripped.SerializeToString()
        self.last_has_preview = bool(event.denoise.preview_png)
        self.events.append(event.SerializeToString())
        job = self.job
        job.state, job.stage, job.percent, job.last_seq = state, event.stage, event.percent, event.seq
        changed, self.changed = self.changed, asyncio.Event()
        changed.set()


class InMemoryJobStore(JobStore):
    """A JobStore in this process's memory, bounded by TTL, job count and events per job."""

    def __init__(self, ttl_seconds: float, max_jobs: int, max_events: int, limits: AdmissionLimits,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self._ttl = ttl_seconds
        self._max_jobs = max_jobs
        self._max_events = max_events
        self._limits = limits
        self._clock = clock
        self._entries: dict[str, _Entry] = {}
        self._by_key: dict[str, str] = {}
        # Finished jobs in the order they ended, with the time they ended.
        self._finished: OrderedDict[str, float] = OrderedDict()
        self._pending: deque[str] = deque()
        self._leased: set[str] = set()
        self._work = asyncio.Event()
        self._on_cancel: CancelListener = lambda _job, _reason: None

    def __len__(self) -> int:
        return len(self._entries)

    async def start(self, on_cancel: CancelListener) -> None:
        self._on_cancel = on_cancel

    async def close(self) -> None:
        self._work.set()

    @property
    def healthy(self) -> bool:
        return True

    # -- submitting --------------------------------------------------------------

    async def find(self, idempotency_key: str) -> tuple[str, str] | None:
        self.sweep()
        job_id = self._by_key.get(idempotency_key) if idempotency_key else None
        return None if job_id is None else (job_id, self._entries[job_id].fingerprint)

    async def place_for_new_job(self) -> int | None:
        if self._active >= self._limits.max_admitted:
            return None
        return self._limits.queue_ahead(len(self._leased), len(self._pending))

    async def create(self, job: NewJob) -> Created:
        self.sweep()
        if job.idempotency_key and job.idempotency_key in self._by_key:
            return Created(self._by_key[job.idempotency_key], False)
        if self._active >= self._limits.max_admitted:
            raise ResourceExhausted(self._limits.refusal(len(self._leased), len(self._pending)))
        if len(self._entries) >= self._max_jobs:
            if not self._finished:
                raise ResourceExhausted(
                    f"the gateway keeps at most {self._max_jobs} jobs and none has ended; retry later")
            self._drop(next(iter(self._finished)))
        entry = self._entries[job.job_id] = _Entry(job)
        entry.add(job.first_event, gateway_pb2.JOB_STATE_QUEUED)
        if job.idempotency_key:
            self._by_key[job.idempotency_key] = job.job_id
        self._pending.append(job.job_id)
        self._work.set()
        return Created(job.job_id, True)

    @property
    def _active(self) -> int:
        return len(self._pending) + len(self._leased)

    # -- running -----------------------------------------------------------------

    async def queue_depth(self) -> int:
        return len(self._pending)

    async def claim(self, owner: str) -> Lease | None:
        if not self._pending or len(self._leased) >= self._limits.max_running:
            return None
        return self._lease(self._pending.popleft(), owner)

    def _lease(self, job_id: str, owner: str) -> Lease:
        entry = self._entries[job_id]
        previous = entry.owner
        entry.owner = owner
        entry.epoch += 1
        self._leased.add(job_id)
        job = entry.job
        return Lease(job_id=job_id, owner=owner, epoch=entry.epoch, spec=entry.spec, last_seq=job.last_seq,
                     percent=job.percent, stage=job.stage, created_at=job.created_at.ToSeconds(),
                     images={index: _copy(point) for index, point in entry.images.items()},
                     cancel_reason=entry.cancel_reason, previous_owner=previous)

    async def wait_for_work(self, seconds: float) -> None:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._work.wait(), seconds)
        self._work.clear()

    async def renew(self, leases: Sequence[Lease]) -> dict[str, str | None]:
        return {lease.job_id: None for lease in leases if not self._holds(lease)}

    def _holds(self, lease: Lease) -> bool:
        entry = self._entries.get(lease.job_id)
        return entry is not None and entry.owner == lease.owner and entry.epoch == lease.epoch

    async def append(self, lease: Lease, event: gateway_pb2.JobEvent, state: gateway_pb2.JobState,
                     checkpoints: dict[int, ImageCheckpoint] | None = None) -> None:
        if not self._holds(lease):
            raise LeaseLost(f"job {lease.job_id} is no longer held by {lease.owner}")
        entry = self._entries[lease.job_id]
        lease.last_seq += 1
        event.seq = lease.last_seq
        entry.add(event, state)
        if len(entry.events) > self._max_events:
            del entry.events[0]
            entry.first_seq += 1
        if checkpoints:
            entry.images.update({index: _copy(point) for index, point in checkpoints.items()})
        if state in TERMINAL_STATES:
            entry.finished = True
            entry.owner = ""
            entry.job.result.CopyFrom(event.result)
            self._finished[lease.job_id] = self._clock()

    async def flushed(self, lease: Lease, within: float | None = None) -> bool:
        return True

    async def release(self, lease: Lease) -> None:
        if self._holds(lease):
            self._entries[lease.job_id].owner = ""
            self._leased.discard(lease.job_id)
            self._pending.appendleft(lease.job_id)
            self._work.set()

    async def finish(self, lease: Lease) -> None:
        self._leased.discard(lease.job_id)
        self._work.set()

    # -- reading and cancelling -----------------------------------------------------

    async def get(self, job_id: str) -> gateway_pb2.Job | None:
        self.sweep()
        entry = self._entries.get(job_id)
        if entry is None:
            return None
        job = gateway_pb2.Job()
        job.CopyFrom(entry.job)
        return job

    async def watch(self, job_id: str, after_seq: int) -> AsyncGenerator[gateway_pb2.JobEvent]:
        self.sweep()
        entry = self._entries.get(job_id)
        if entry is None:
            raise NotFound(f"job {job_id!r} not found (ended jobs are kept for {self._ttl:g} s)")
        last = after_seq
        while True:
            batch = entry.events_after(last)
            changed = entry.changed
            for data in batch:
                event = gateway_pb2.JobEvent.FromString(data)
                yield event
                last = event.seq
            if entry.finished and last >= entry.job.last_seq:
                return
            if not batch:
                await changed.wait()

    async def request_cancel(self, job_id: str, reason: str, owner: str) -> Lease | None:
        self.sweep()
        entry = self._entries.get(job_id)
        if entry is None:
            raise NotFound(f"job {job_id!r} not found (ended jobs are kept for {self._ttl:g} s)")
        if entry.finished:
            return None
        if entry.cancel_reason is None:
            entry.cancel_reason = reason
        if job_id in self._pending:
            self._pending.remove(job_id)
            return self._lease(job_id, owner)
        self._on_cancel(job_id, entry.cancel_reason)
        return None

    # -- bounds --------------------------------------------------------------------

    def sweep(self) -> None:
        """Drops finished jobs older than the TTL."""
        deadline = self._clock() - self._ttl
        while self._finished:
            job_id, ended = next(iter(self._finished.items()))
            if ended > deadline:
                break
            self._drop(job_id)

    def _drop(self, job_id: str) -> None:
        self._finished.pop(job_id, None)
        entry = self._entries.pop(job_id, None)
        if entry is not None and entry.idempotency_key:
            self._by_key.pop(entry.idempotency_key, None)


def _copy(point: ImageCheckpoint) -> ImageCheckpoint:
    return ImageCheckpoint(point.stored_key, point.remote_job_id, point.endpoint, point.result, point.failure)
