"""Where jobs live: the queue, the leases, the event histories and the checkpoints.

``JobStore`` is what the gateway codes against. Two implementations:
``InMemoryJobStore`` (one process, the default) and ``RedisJobStore`` (any
number of gateway replicas sharing one Redis). Both behave as one system
would: a submitted job is created with its first event and queued; a gateway
with a free running slot claims it (``claim``) and holds a lease on it; the
holder appends events (numbered by the store, in order, exactly once) and
checkpoints; anyone can read, watch and cancel it. In Redis a lease runs out
unless renewed, and the next ``claim`` anywhere hands the job over, with its
checkpoints, to be resumed.
"""

from __future__ import annotations

import abc
import hashlib
from collections.abc import AsyncGenerator, Callable, Sequence
from dataclasses import dataclass, field

from facegen.v1 import gateway_pb2
from services.gateway.validation import JobSpec

TERMINAL_STATES = frozenset({gateway_pb2.JOB_STATE_COMPLETED, gateway_pb2.JOB_STATE_FAILED,
                             gateway_pb2.JOB_STATE_CANCELLED})

# Called with (job id, reason) when a job is asked to stop.
CancelListener = Callable[[str, str], None]


def fingerprint(request: gateway_pb2.JobRequest) -> str:
    """A digest of everything in ``request`` but its idempotency key: equal requests, equal digests."""
    copy = gateway_pb2.JobRequest()
    copy.CopyFrom(request)
    copy.idempotency_key = ""
    return hashlib.sha256(copy.SerializeToString(deterministic=True)).hexdigest()


@dataclass
class ImageCheckpoint:
    """How far one image of a job got, durably: what a resumed job need not do again."""

    # The image (generated, or the template) is in storage under this temporary key.
    stored_key: str = ""
    # A remote face-swap job was submitted for it.
    remote_job_id: str = ""
    endpoint: str = ""
    # The image is finished: swapped or fallen back (result), or failed (failure).
    result: gateway_pb2.ImageResult | None = None
    failure: gateway_pb2.ImageFailure | None = None

    @property
    def finished(self) -> bool:
        """True when nothing is left to do for the image."""
        return self.result is not None or self.failure is not None


@dataclass(frozen=True)
class NewJob:
    """A validated job about to be stored, with the event that opens its history."""

    job_id: str
    spec: JobSpec
    first_event: gateway_pb2.JobEvent
    idempotency_key: str = ""
    fingerprint: str = ""
    # What is durable already (a template's target, stored at submit).
    images: dict[int, ImageCheckpoint] = field(default_factory=dict)


@dataclass(frozen=True)
class Created:
    """What ``create`` did: the job id (an earlier job's for a known idempotency key) and whether it is new."""

    job_id: str
    created: bool


@dataclass
class Lease:
    """A job claimed by one gateway, with everything needed to run or resume it."""

    job_id: str
    owner: str
    # Incremented by every claim: a holder whose epoch is stale may not write any more.
    epoch: int
    spec: JobSpec
    last_seq: int
    percent: float = 0.0
    stage: gateway_pb2.Stage = gateway_pb2.STAGE_QUEUED
    # Seconds since the epoch when the job was created.
    created_at: float = 0.0
    images: dict[int, ImageCheckpoint] = field(default_factory=dict)
    cancel_reason: str | None = None
    # The gateway that held the job before this claim ("" for a job never run before).
    previous_owner: str = ""

    @property
    def resumed(self) -> bool:
        """True when another gateway ran the job before and this claim takes it over."""
        return self.epoch > 1


class StoreUnavailable(Exception):
    """The store cannot be reached; what was asked may not have happened."""


class LeaseLost(Exception):
    """Another gateway holds the job now (or it is gone): the old holder must stop, silently."""


class JobStore(abc.ABC):
    """Jobs shared by every gateway that uses the same store."""

    # How long a lease lasts without renewal; None: leases never run out (one process).
    lease_seconds: float | None = None

    @abc.abstractmethod
    async def start(self, on_cancel: CancelListener) -> None:
        """Connects; ``on_cancel`` is then called for every cancel request of any job."""

    @abc.abstractmethod
    async def close(self) -> None:
        """Disconnects; buffered writes that could not be made are dropped."""

    @property
    @abc.abstractmethod
    def healthy(self) -> bool:
        """False while the store cannot be reached."""

    # -- submitting --------------------------------------------------------------

    @abc.abstractmethod
    async def find(self, idempotency_key: str) -> tuple[str, str] | None:
        """(job id, request fingerprint) of the kept job created with ``idempotency_key``."""

    @abc.abstractmethod
    async def place_for_new_job(self) -> int | None:
        """Where a job admitted now would stand: -1 (it runs at once), N (jobs ahead of it), or None
        when no job can be admitted now. A hint for the first event; ``create`` decides."""

    @abc.abstractmethod
    async def create(self, job: NewJob) -> Created:
        """Stores and queues ``job`` with its first event, unless its idempotency key names a kept job.

        Raises ResourceExhausted when the running and queued limits are
        reached, and StoreUnavailable when the store cannot be reached.
        """

    # -- running -----------------------------------------------------------------

    @abc.abstractmethod
    async def queue_depth(self) -> int:
        """Jobs waiting for a running slot (of every gateway sharing the store). Raises StoreUnavailable."""

    @abc.abstractmethod
    async def claim(self, owner: str) -> Lease | None:
        """The next job for ``owner`` to run: one whose lease ran out, or a queued one while
        fewer than the running limit hold leases; None when there is none."""

    @abc.abstractmethod
    async def wait_for_work(self, seconds: float) -> None:
        """Returns when a job may have become claimable, or after ``seconds``."""

    @abc.abstractmethod
    async def renew(self, leases: Sequence[Lease]) -> dict[str, str | None]:
        """Extends ``leases``; returns the job ids lost to another holder (value None) or asked
        to cancel (value: the reason). Raises StoreUnavailable."""

    @abc.abstractmethod
    async def append(self, lease: Lease, event: gateway_pb2.JobEvent, state: gateway_pb2.JobState,
                     checkpoints: dict[int, ImageCheckpoint] | None = None) -> None:
        """Numbers ``event`` (its seq becomes the lease's next) and adds it to the job's history,
        with the job's new state and the given image checkpoints.

        The write may be buffered while the store is unreachable; ``flushed``
        waits for it. Raises LeaseLost when another gateway holds the job.
        """

    @abc.abstractmethod
    async def flushed(self, lease: Lease, within: float | None = None) -> bool:
        """Waits (at most ``within`` seconds) until every append of ``lease`` is stored;
        False when that time passed or the lease was lost."""

    @abc.abstractmethod
    async def release(self, lease: Lease) -> None:
        """Gives a job that has not ended back, for another gateway to resume at once."""

    @abc.abstractmethod
    async def finish(self, lease: Lease) -> None:
        """Forgets ``lease`` once its terminal event is stored, freeing its running slot."""

    # -- reading and cancelling -----------------------------------------------------

    @abc.abstractmethod
    async def get(self, job_id: str) -> gateway_pb2.Job | None:
        """A snapshot of the job (with its result once it has ended), or None."""

    @abc.abstractmethod
    def watch(self, job_id: str, after_seq: int) -> AsyncGenerator[gateway_pb2.JobEvent]:
        """Every kept event with seq > ``after_seq``, then live ones, ending after the terminal event.

        Raises NotFound when the job is unknown, StoreUnavailable when the store is lost.
        """

    @abc.abstractmethod
    async def request_cancel(self, job_id: str, reason: str, owner: str) -> Lease | None:
        """Asks the job to stop, wherever it runs (``on_cancel`` fires on its holder).

        A job still waiting in the queue is taken out of it and returned as a
        lease of ``owner``, who ends it. Raises NotFound for an unknown job.
        """
