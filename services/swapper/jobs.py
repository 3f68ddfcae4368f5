"""What a remote swap is made of: its inputs, the remote job's state, the events it reports."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Protocol

from services.common.errors import Cancelled
from services.common.images import ImageInfo
from services.swapper.endpoints import Endpoint
from services.swapper.unchanged import Fingerprint

RUNNING = frozenset({"IN_QUEUE", "IN_PROGRESS"})
TERMINAL = frozenset({"COMPLETED", "FAILED", "CANCELLED", "TIMED_OUT"})


class CallerGone(Cancelled):
    """An event could not be delivered: the caller went away (gRPC reports it before it cancels the call)."""


@dataclass(frozen=True)
class SwapInputs:
    """What the worker gets: two URLs it can fetch, and the options."""

    source_url: str
    target_url: str
    mouth_mask: bool = False
    use_face_enhancer: bool = False
    many_faces: bool = False


@dataclass(frozen=True)
class Submitted:
    """The endpoint accepted the job (or an earlier call of a resumable swap had it accepted)."""

    job_id: str
    endpoint: str
    resumed: bool = False


@dataclass(frozen=True)
class StatusChanged:
    """The remote job's status changed (or was first seen)."""

    job_id: str
    endpoint: str
    status: str
    delay_ms: int
    execution_ms: int


@dataclass(frozen=True)
class SwapSuccess:
    """The swapped image, checked."""

    data: bytes
    info: ImageInfo
    job_id: str
    endpoint: str
    fingerprint: Fingerprint | None = None
    # d(reference, result), when the identity check measured it.
    identity_distance: float | None = None


RemoteEvent = Submitted | StatusChanged
Emit = Callable[[RemoteEvent], Awaitable[None]]


@dataclass
class RemoteJob:
    """One remote job as this call knows it."""

    endpoint: Endpoint | None = None
    job_id: str | None = None
    status: str = ""
    # The endpoint no longer runs it (terminal, expired) or will not let us cancel it (key rejected).
    settled: bool = False
    cancel_sent: bool = False
    # The swap was cancelled (CancelSwap): cancel the job even if a resumable call's caller left.
    cancel_requested: bool = False

    def accepted(self, endpoint: Endpoint, job_id: str, status: str) -> None:
        """The endpoint queued the job."""
        self.endpoint, self.job_id, self.status = endpoint, job_id, status


class Journal(Protocol):
    """Where a resumable swap records its remote job, so that a later call can follow it.

    The swap claims its submission (``submitting``) before the first ``/run``.
    """

    async def submitted(self, endpoint: str, job_id: str) -> bool:
        """The endpoint accepted job ``job_id``; True when the swap was cancelled (CancelSwap) meanwhile."""
