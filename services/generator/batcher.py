"""The bounded wait queue in front of the device, and how it forms batches.

Jobs wait in arrival order. The worker takes the oldest job and, until
``window`` seconds after that job arrived, lets compatible jobs (equal batch
key) join it, up to ``max_images`` images per pipeline call; then it runs the
batch and waits for it before taking the next. A job that already waited a
window (the device was busy) starts without further delay. Every waiting job
hears its position whenever it changes (0 = runs next).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable

from services.common import logs
from services.common.errors import ResourceExhausted
from services.generator.jobs import Job, queued_event

log = logging.getLogger(__name__)


class Batcher:
    """Queue of jobs waiting for the device; ``run`` feeds batches to ``execute`` one at a time."""

    def __init__(self, execute: Callable[[list[Job]], Awaitable[None]], queue_size: int, window_s: float,
                 max_images: int) -> None:
        self._execute = execute
        self._queue_size = queue_size
        self._window_s = window_s
        self._max_images = max_images
        self._waiting: list[Job] = []
        self._changed = asyncio.Event()

    @property
    def waiting(self) -> int:
        """Jobs waiting (not counting the batch on the device)."""
        return len(self._waiting)

    def submit(self, job: Job) -> None:
        """Adds ``job`` at the back; ResourceExhausted when ``queue_size`` jobs already wait."""
        if len(self._waiting) >= self._queue_size:
            raise ResourceExhausted(
                f"the generator queue is full ({len(self._waiting)} requests waiting); retry later")
        self._waiting.append(job)
        self._publish_positions()
        self._changed.set()

    def withdraw(self, job: Job) -> bool:
        """Removes a waiting job (its caller left); False when it is not waiting."""
        try:
            self._waiting.remove(job)
        except ValueError:
            return False
        self._publish_positions()
        self._changed.set()
        return True

    def drain(self) -> list[Job]:
        """Removes and returns every waiting job (at shutdown)."""
        jobs, self._waiting = self._waiting, []
        return jobs

    async def run(self) -> None:
        """Forever: form the next batch, run it, repeat."""
        while True:
            batch = await self._next_batch()
            self._publish_positions()
            try:
                await self._execute(batch)
            except Exception as exc:
                # A bug in execute must fail its batch, not stop the worker and strand every later job.
                logs.event(log, "generate.batch_crashed", logging.ERROR, error=exc, exc_info=exc)
                for job in batch:
                    job.fail(exc)

    async def _next_batch(self) -> list[Job]:
        while True:
            while not self._waiting:
                self._changed.clear()
                await self._changed.wait()
            first = self._waiting[0]
            deadline = first.enqueued_at + self._window_s
            while first in self._waiting and self._images(self._select(first)) < self._max_images:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    break
                self._changed.clear()
                try:
                    await asyncio.wait_for(self._changed.wait(), remaining)
                except TimeoutError:
                    break
            if first not in self._waiting:
                continue  # cancelled while it waited for company
            batch = self._select(first)
            for job in batch:
                self._waiting.remove(job)
            return batch

    def _select(self, first: Job) -> list[Job]:
        """``first`` plus the compatible waiting jobs, oldest first, within the image cap."""
        key = first.params.batch_key()
        batch = [first]
        images = first.params.num_images
        for job in self._waiting:
            if job is first or job.params.batch_key() != key:
                continue
            if images + job.params.num_images > self._max_images:
                continue
            batch.append(job)
            images += job.params.num_images
        return batch

    @staticmethod
    def _images(batch: list[Job]) -> int:
        return sum(job.params.num_images for job in batch)

    def _publish_positions(self) -> None:
        for position, job in enumerate(self._waiting):
            if job.last_position != position:
                job.last_position = position
                job.emit(queued_event(position))
