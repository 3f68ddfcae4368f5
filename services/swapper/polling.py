"""How long to wait between two status requests for one remote job."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class PollSchedule:
    """Gaps that grow with the job's age: ``clamp(age * ratio, minimum, maximum)``.

    A short job is seen finishing within ``minimum``; a long job is polled
    ever less often, so that the number of requests grows with the logarithm
    of its run time until the gap reaches ``maximum``. ``ratio = 0`` with
    ``minimum = maximum`` is a fixed schedule (the first version polled every
    5 s).
    """

    minimum: float = 0.25
    maximum: float = 3.0
    ratio: float = 0.5

    def gap(self, age: float) -> float:
        """Seconds to wait before the next status request of a job submitted ``age`` s ago."""
        return max(self.minimum, min(self.maximum, age * self.ratio))
