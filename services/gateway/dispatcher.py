"""This gateway's share of the work: claims jobs from the store, runs them, keeps their leases.

While it has a free running slot the dispatcher claims the next job (a queued
one, or one whose gateway stopped renewing its lease) and runs it. With a
store whose leases run out (Redis) it renews the leases of its jobs a few
times per lease period; a job that another gateway took over meanwhile is
detached (stopped here without an event), and a job someone asked to cancel
is cancelled even if the notification was lost.

Draining (on SIGTERM) stops claiming, lets the running jobs go on for a
while, then hands what is left back to the store for another gateway to
resume at once (Redis), or cancels it with a clear message (one process).
"""

from __future__ import annotations

import asyncio
import logging

from services.common import logs
from services.gateway.orchestrator import JobRun, Services
from services.gateway.store import JobStore, Lease, StoreUnavailable

log = logging.getLogger(__name__)

SHUTDOWN_MESSAGE = "the gateway is shutting down"
# How often an idle dispatcher looks for work it was not told about (expired leases).
IDLE_POLL_SECONDS = 1.0
# How long a stopping gateway waits for cancelled or released jobs to settle.
SETTLE_SECONDS = 5.0


class Dispatcher:
    """Claims and runs jobs for one gateway."""

    def __init__(self, services: Services, owner: str, max_running: int) -> None:
        self._services = services
        self._store: JobStore = services.store
        self._owner = owner
        self._max_running = max_running
        self._runs: dict[str, JobRun] = {}
        self._tasks: dict[str, asyncio.Task[None]] = {}
        self._to_release: set[str] = set()
        self._loops: list[asyncio.Task[None]] = []
        self._claiming = False

    @property
    def running(self) -> int:
        """Jobs running on this gateway."""
        return len(self._runs)

    def start(self) -> None:
        """Starts claiming (and renewing leases, when they run out)."""
        self._claiming = True
        self._loops.append(asyncio.create_task(self._claim_loop(), name="dispatcher-claim"))
        if self._store.lease_seconds is not None:
            self._loops.append(asyncio.create_task(self._renew_loop(self._store.lease_seconds),
                                                   name="dispatcher-renew"))

    def on_cancel(self, job_id: str, reason: str) -> None:
        """Cancels the job if it runs here (the store calls this for every cancel request)."""
        run = self._runs.get(job_id)
        if run is not None:
            run.cancel(reason)

    def adopt(self, lease: Lease) -> None:
        """Runs a job this gateway has claimed."""
        with logs.job_context(lease.job_id):
            run = JobRun(lease, self._services)
            self._runs[lease.job_id] = run
            self._tasks[lease.job_id] = asyncio.create_task(self._run(run), name=f"lease-{lease.job_id}")

    async def _run(self, run: JobRun) -> None:
        lease = run.lease
        try:
            await run.start()
            if lease.job_id in self._to_release:
                await self._store.flushed(lease, within=SETTLE_SECONDS)
                await self._store.release(lease)
                logs.event(log, "job.released", owner=self._owner)
            elif await self._store.flushed(lease):
                await self._store.finish(lease)
        except StoreUnavailable as exc:
            # The job's lease runs out and another gateway resumes it from its checkpoints.
            logs.event(log, "job.store_lost", logging.WARNING, error=exc)
        finally:
            self._runs.pop(lease.job_id, None)
            self._tasks.pop(lease.job_id, None)
            self._to_release.discard(lease.job_id)

    async def claim_now(self) -> None:
        """Claims one job at once if this gateway has a free slot (a job just submitted here, usually).

        Its Watch and Run streams on this gateway then need no subscription to follow it.
        """
        if self._claiming and len(self._runs) < self._max_running:
            await self._claim_one()

    async def _claim_one(self) -> bool:
        lease = await self._store.claim(self._owner)
        if lease is None:
            return False
        if lease.resumed:
            logs.event(log, "job.claimed_orphan", job=lease.job_id, previous=lease.previous_owner)
        self.adopt(lease)
        return True

    async def _claim_loop(self) -> None:
        failures = 0
        while self._claiming:
            try:
                while self._claiming and len(self._runs) < self._max_running and await self._claim_one():
                    pass
                failures = 0
            except StoreUnavailable as exc:
                failures += 1
                if failures == 1:
                    logs.event(log, "dispatcher.store_unavailable", logging.WARNING, error=exc)
            await self._store.wait_for_work(min(IDLE_POLL_SECONDS * (1 + failures), 5.0))

    async def _renew_loop(self, lease_seconds: float) -> None:
        failing = False
        while True:
            await asyncio.sleep(lease_seconds / 3)
            leases = [run.lease for run in self._runs.values()]
            if not leases:
                continue
            try:
                changes = await self._store.renew(leases)
            except StoreUnavailable as exc:
                if not failing:
                    logs.event(log, "dispatcher.renew_failed", logging.WARNING, jobs=len(leases), error=exc)
                failing = True
                continue
            failing = False
            for job_id, reason in changes.items():
                run = self._runs.get(job_id)
                if run is None:
                    continue
                if reason is None:
                    with logs.job_context(job_id):
                        logs.event(log, "job.lease_lost", logging.WARNING, owner=self._owner)
                    run.detach()
                else:
                    run.cancel(reason)

    async def drain(self, seconds: float) -> None:
        """Stops claiming, lets running jobs go on for ``seconds``, then releases or cancels the rest."""
        self._claiming = False
        for loop in self._loops:
            if loop.get_name() == "dispatcher-claim":
                loop.cancel()
        tasks = list(self._tasks.values())
        if tasks and seconds > 0:
            logs.event(log, "dispatcher.draining", jobs=len(tasks), seconds=seconds)
            await asyncio.wait(tasks, timeout=seconds)
        await self._stop_runs()

    async def _stop_runs(self) -> None:
        handing_over = self._store.lease_seconds is not None
        for job_id, run in list(self._runs.items()):
            if handing_over:
                self._to_release.add(job_id)
                run.detach()
            else:
                run.cancel(f"{SHUTDOWN_MESSAGE}; submit the job again")
        tasks = list(self._tasks.values())
        if tasks:
            await asyncio.wait(tasks, timeout=SETTLE_SECONDS)

    async def close(self) -> None:
        """Stops every loop and job (releasing or cancelling them)."""
        self._claiming = False
        await self._stop_runs()
        for loop in self._loops:
            loop.cancel()
        await asyncio.gather(*self._loops, return_exceptions=True)
        self._loops.clear()
