"""Jobs and their statuses: IN_QUEUE → IN_PROGRESS → COMPLETED | FAILED | CANCELLED | TIMED_OUT."""

from __future__ import annotations

import asyncio
import enum
import itertools
import time
from collections.abc import Callable
from concurrent.futures import Future
from dataclasses import dataclass, field
from typing import Any

IN_QUEUE, IN_PROGRESS = "IN_QUEUE", "IN_PROGRESS"
COMPLETED, FAILED, CANCELLED, TIMED_OUT = "COMPLETED", "FAILED", "CANCELLED", "TIMED_OUT"
TERMINAL = frozenset({COMPLETED, FAILED, CANCELLED, TIMED_OUT})
ACTIVE = frozenset({IN_QUEUE, IN_PROGRESS})


class Marker(enum.Enum):
    """Values that stand for "not given" where None is a meaningful value."""

    DEFAULT = "default"  # JobPlan.output: the target image with inverted colours
    NO_OUTPUT = "no output"  # Job.output: the status body has no "output" key


DEFAULT = Marker.DEFAULT
NO_OUTPUT = Marker.NO_OUTPUT


@dataclass
class JobPlan:
    """How a scripted job runs: queue and run times, then its final status and output."""

    queue_s: float = 0.0
    run_s: float = 0.05
    final: str = COMPLETED
    # DEFAULT: the downloaded target with inverted colours as raw base64 PNG (a fixed PNG when
    # fetch_inputs is False); a callable gets the Job and returns the output; anything else is
    # returned as it is (None included, as "output": null).
    output: Any = DEFAULT
    error: Any = None
    fetch_inputs: bool = True


PlanSource = JobPlan | Callable[[Any], JobPlan]


def cycle_plans(plans: list[JobPlan]) -> Callable[[Any], JobPlan]:
    """A plan source giving each new job the next plan of ``plans``, round and round."""
    source = itertools.cycle(plans)
    return lambda _input: next(source)


@dataclass(eq=False)
class Job:
    """One submitted job. Times are ``time.monotonic()`` seconds."""

    id: str
    endpoint_id: str
    input: Any
    policy: Any
    execution_timeout_s: float
    ttl_s: float
    retention_s: float
    fate: str | None = None  # fault injection: None, "fail", "hang", "crash" or "unchanged"
    plan: JobPlan | None = None  # scripted endpoints only
    status: str = IN_QUEUE
    submitted_at: float = field(default_factory=time.monotonic)
    started_at: float | None = None
    finished_at: float | None = None
    cancelled_at: float | None = None
    output: Any = NO_OUTPUT
    error: Any = None
    worker_id: str | None = None
    attempt: int = 0  # bumped by retry; a late result for an earlier attempt is dropped
    # The (source, target) downloads of a scripted job, started at submission.
    inputs: Future[tuple[bytes, bytes]] | None = None
    changed: asyncio.Event = field(default_factory=asyncio.Event)
    timers: list[asyncio.TimerHandle] = field(default_factory=list)  # ttl, execution timeout, retention

    def notify(self) -> None:
        """Wake everything waiting for this job to change."""
        previous, self.changed = self.changed, asyncio.Event()
        previous.set()

    def to_status(self, now: float | None = None) -> dict[str, Any]:
        """The body of ``GET /status/{id}``, shaped like RunPod's."""
        now = time.monotonic() if now is None else now
        body: dict[str, Any] = {"id": self.id, "status": self.status}
        if self.started_at is not None:
            body["delayTime"] = round((self.started_at - self.submitted_at) * 1000)
            body["executionTime"] = round(((self.finished_at or now) - self.started_at) * 1000)
        elif self.finished_at is not None:
            body["delayTime"] = round((self.finished_at - self.submitted_at) * 1000)
        if self.worker_id:
            body["workerId"] = self.worker_id
        if self.output is not NO_OUTPUT and self.status not in ACTIVE:
            body["output"] = self.output
        if self.error is not None and self.status not in ACTIVE:
            body["error"] = self.error
        return body
