"""Request-rate limits per endpoint, shared by every job in flight.

RunPod documents its limits as "N requests per 10 s" per route (/run 1000,
/status 2000, /cancel 100). A token bucket sized to N would allow N at once
and N more as it refills, i.e. up to 2N in one window; this limiter instead
hands out send times such that no window of ``window`` seconds ever holds
more than ``limit`` requests, while still allowing a burst of ``limit`` at
once. Each caller reserves the earliest slot ``t`` with
``t >= reservation[i - limit] + window``, then sleeps until ``t``: callers are
served in order and never wake each other up for nothing.
"""

from __future__ import annotations

import asyncio
import math
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass

# RunPod's documented limits, requests per 10 s.
RUNPOD_LIMITS: dict[str, int] = {"run": 1000, "status": 2000, "cancel": 100}
RUNPOD_WINDOW_S = 10.0


class RateLimitWouldExceedDeadline(Exception):
    """The next free slot comes after the caller's deadline."""

    def __init__(self, route: str, wait: float) -> None:
        super().__init__(f"the {route} rate limit would delay the request by {wait:.1f} s, past the deadline")
        self.route = route
        self.wait = wait


class SlidingWindowLimiter:
    """At most ``limit`` requests in any ``window`` seconds, handed out first come first served.

    Used from one event loop only (no locking needed).
    """

    def __init__(self, limit: int, window: float, clock: Callable[[], float] = time.monotonic) -> None:
        if limit < 1:
            raise ValueError("limit must be at least 1")
        self.limit = limit
        self.window = window
        self._clock = clock
        self._reservations: deque[float] = deque(maxlen=limit)

    def next_slot(self) -> float:
        """The earliest time a request could be sent now (without reserving it)."""
        now = self._clock()
        if len(self._reservations) < self.limit:
            return max(now, self._reservations[-1]) if self._reservations else now
        return max(now, self._reservations[0] + self.window, self._reservations[-1])

    def reserve(self, deadline: float | None = None, route: str = "") -> float:
        """Reserves the next slot and returns its time; raises if it falls after ``deadline``."""
        slot = self.next_slot()
        if deadline is not None and slot > deadline:
            raise RateLimitWouldExceedDeadline(route, slot - self._clock())
        self._reservations.append(slot)
        return slot

    async def acquire(self, deadline: float | None = None, route: str = "") -> float:
        """Waits for a slot; returns how long it waited."""
        slot = self.reserve(deadline, route)
        wait = slot - self._clock()
        if wait > 0:
            await asyncio.sleep(wait)
            return wait
        return 0.0


@dataclass
class EndpointRateLimiter:
    """One limiter per RunPod route class for one endpoint."""

    routes: dict[str, SlidingWindowLimiter]

    @classmethod
    def for_runpod(cls, safety: float = 0.8, clock: Callable[[], float] = time.monotonic,
                   limits: dict[str, int] | None = None, window: float = RUNPOD_WINDOW_S,
                   ) -> EndpointRateLimiter:
        """Limits at ``safety`` times RunPod's documented ones (or ``limits``)."""
        table = limits or RUNPOD_LIMITS
        return cls({route: SlidingWindowLimiter(max(1, math.floor(limit * safety)), window, clock)
                    for route, limit in table.items()})

    async def acquire(self, route: str, deadline: float | None = None) -> float:
        """Waits for a slot on ``route`` ("run", "status" or "cancel")."""
        return await self.routes[route].acquire(deadline, route)
