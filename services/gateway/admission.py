"""At most N jobs run at once, at most Q wait for a slot, and the rest are refused.

The limits hold for the whole deployment: the store counts running (leased)
and waiting (queued) jobs, in one process's memory or in the shared Redis.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class AdmissionLimits:
    """The running and queued limits, and what they mean for one more job."""

    max_running: int
    max_queued: int

    @property
    def max_admitted(self) -> int:
        """Jobs that may be running or waiting at once."""
        return self.max_running + self.max_queued

    def queue_ahead(self, running: int, waiting: int) -> int:
        """How many admitted jobs will get a slot before one admitted now; -1 when it runs at once."""
        ahead = running + waiting - self.max_running
        return ahead if ahead >= 0 else -1

    def refusal(self, running: int, waiting: int) -> str:
        """The message of a job refused because every place is taken."""
        return (f"facegen is at capacity ({running} jobs running, {waiting} queued, "
                f"queue limit {self.max_queued}); retry later")
