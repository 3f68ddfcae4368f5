"""Where jobs, their event history and their results live.

``JobStore`` is the interface the gateway codes against; ``InMemoryJobStore``
implements it inside one process with bounded memory: finished jobs are
dropped ``ttl`` seconds after they end, at most ``max_jobs`` jobs are kept (the
oldest finished go first), and each job keeps at most ``max_events`` events.
A shared store (Redis streams, a database) can implement the same interface
so several gateway replicas serve Watch and Get for each other's jobs.
"""

from __future__ import annotations

import abc
import asyncio
import time
from collections import OrderedDict
from collections.abc import AsyncIterator, Callable

from facegen.v1 import gateway_pb2
from services.common.errors import NotFound, ResourceExhausted

TERMINAL_STATES = frozenset({gateway_pb2.JOB_STATE_COMPLETED, gateway_pb2.JOB_STATE_FAILED,
                             gateway_pb2.JOB_STATE_CANCELLED})


class JobStore(abc.ABC):
    """Jobs by id and by idempotency key, each with an ordered event history."""

    @abc.abstractmethod
    async def create(self, job_id: str, idempotency_key: str = "") -> tuple[str, bool]:
        """Creates job ``job_id`` unless ``idempotency_key`` already names a job.

        Returns (the job id, whether it was created). Raises ResourceExhausted
        when the store is full of jobs that have not ended.
        """

    @abc.abstractmethod
    async def find(self, idempotency_key: str) -> str | None:
        """The id of the job created with ``idempotency_key``, if it is still kept."""

    @abc.abstractmethod
    async def append(self, job_id: str, event: gateway_pb2.JobEvent, state: gateway_pb2.JobState) -> None:
        """Adds ``event`` (its seq one more than the last) and sets the job's state."""

    @abc.abstractmethod
    async def get(self, job_id: str) -> gateway_pb2.Job | None:
        """A snapshot of the job (with its result once it has ended), or None."""

    @abc.abstractmethod
    def watch(self, job_id: str, after_seq: int) -> AsyncIterator[gateway_pb2.JobEvent]:
        """Every kept event with seq > ``after_seq``, then live ones, ending after the terminal event.

        Raises NotFound when the job is unknown.
        """


class _Entry:
    # Events are kept serialised: ~130 bytes each instead of ~900 for a live message.
    __slots__ = ("changed", "events", "finished", "first_seq", "idempotency_key", "job", "last_has_preview")

    def __init__(self, job: gateway_pb2.Job, idempotency_key: str) -> None:
        self.job = job
        self.idempotency_key = idempotency_key
        self.events: list[bytes] = []
        self.first_seq = 1
        self.changed = asyncio.Event()
        self.finished = False
        self.last_has_preview = False

    def events_after(self, seq: int) -> list[bytes]:
        start = max(0, seq + 1 - self.first_seq)
        return self.events[start:]


class InMemoryJobStore(JobStore):
    """A JobStore in this process's memory, bounded by TTL, job count and events per job."""

    def __init__(self, ttl_seconds: float, max_jobs: int, max_events: int,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self._ttl = ttl_seconds
        self._max_jobs = max_jobs
        self._max_events = max_events
        self._clock = clock
        self._entries: dict[str, _Entry] = {}
        self._by_key: dict[str, str] = {}
        # Finished jobs in the order they ended, with the time they ended.
        self._finished: OrderedDict[str, float] = OrderedDict()

    def __len__(self) -> int:
        return len(self._entries)

    async def create(self, job_id: str, idempotency_key: str = "") -> tuple[str, bool]:
        self.sweep()
        if idempotency_key and idempotency_key in self._by_key:
            return self._by_key[idempotency_key], False
        if len(self._entries) >= self._max_jobs:
            if not self._finished:
                raise ResourceExhausted(
                    f"the gateway keeps at most {self._max_jobs} jobs and none has ended; retry later")
            self._drop(next(iter(self._finished)))
        job = gateway_pb2.Job(job_id=job_id, state=gateway_pb2.JOB_STATE_QUEUED,
                              stage=gateway_pb2.STAGE_QUEUED)
        job.created_at.GetCurrentTime()
        self._entries[job_id] = _Entry(job, idempotency_key)
        if idempotency_key:
            self._by_key[idempotency_key] = job_id
        return job_id, True

    async def find(self, idempotency_key: str) -> str | None:
        self.sweep()
        return self._by_key.get(idempotency_key) if idempotency_key else None

    async def append(self, job_id: str, event: gateway_pb2.JobEvent, state: gateway_pb2.JobState) -> None:
        entry = self._entries.get(job_id)
        if entry is None or entry.finished:
            return
        events = entry.events
        if entry.last_has_preview:
            # Only the newest preview is worth keeping for watchers that lag behind.
            stripped = gateway_pb2.JobEvent.FromString(events[-1])
            stripped.denoise.preview_png = b""
            events[-1] = stripped.SerializeToString()
        entry.last_has_preview = bool(event.denoise.preview_png)
        events.append(event.SerializeToString())
        if len(events) > self._max_events:
            del events[0]
            entry.first_seq += 1
        job = entry.job
        job.state = state
        job.stage = event.stage
        job.percent = event.percent
        job.last_seq = event.seq
        if state in TERMINAL_STATES:
            entry.finished = True
            self._finished[job_id] = self._clock()
        changed, entry.changed = entry.changed, asyncio.Event()
        changed.set()

    async def get(self, job_id: str) -> gateway_pb2.Job | None:
        self.sweep()
        entry = self._entries.get(job_id)
        if entry is None:
            return None
        job = gateway_pb2.Job()
        job.CopyFrom(entry.job)
        if entry.finished:
            job.result.CopyFrom(gateway_pb2.JobEvent.FromString(entry.events[-1]).result)
        return job

    async def watch(self, job_id: str, after_seq: int) -> AsyncIterator[gateway_pb2.JobEvent]:
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
