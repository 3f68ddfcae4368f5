"""At most N jobs run at once, at most Q wait for a slot, and the rest are refused."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from services.common.errors import ResourceExhausted


class Admission:
    """Counts admitted jobs (running or waiting) and hands out running slots in arrival order."""

    def __init__(self, max_running: int, max_queued: int) -> None:
        self.max_running = max_running
        self.max_queued = max_queued
        self._slots = asyncio.Semaphore(max_running)
        self._admitted = 0
        self._running = 0

    @property
    def running(self) -> int:
        """Jobs holding a slot."""
        return self._running

    @property
    def waiting(self) -> int:
        """Admitted jobs still waiting for a slot."""
        return self._admitted - self._running

    @property
    def backlog(self) -> int:
        """Admitted jobs beyond the running slots: how many will wait once every slot is taken."""
        return max(0, self._admitted - self.max_running)

    def reserve(self) -> None:
        """Admits one more job, or raises ResourceExhausted when running and queue are full.

        Every successful reserve must be followed by exactly one ``slot()`` or ``release_unused()``.
        """
        if self._admitted >= self.max_running + self.max_queued:
            raise ResourceExhausted(
                f"the gateway is at capacity ({self._running} jobs running, {self.waiting} queued, "
                f"queue limit {self.max_queued}); retry later")
        self._admitted += 1

    def release_unused(self) -> None:
        """Gives back a reservation that never became a job."""
        self._admitted -= 1

    @asynccontextmanager
    async def slot(self) -> AsyncIterator[None]:
        """Waits for a running slot for a reserved job and holds it for the block."""
        try:
            async with self._slots:
                self._running += 1
                try:
                    yield
                finally:
                    self._running -= 1
        finally:
            self._admitted -= 1
