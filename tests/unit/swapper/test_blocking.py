"""Thread pools that count leftovers, and clean-up that survives cancellation."""

from __future__ import annotations

import asyncio
import threading

import pytest

from services.common import logs
from services.common.metrics import value
from services.swapper.blocking import BlockingPool, CallScope
from services.swapper.metrics import SwapperMetrics
from services.swapper.remote import finish
from tests.waiting import until

pytestmark = pytest.mark.unit


class Counted(BlockingPool):
    """A pool whose calls in flight are counted on a metric of its own, as the swapper's are."""

    def __init__(self, name: str, workers: int) -> None:
        self.metrics = SwapperMetrics()
        super().__init__(name, workers, self.metrics.blocking_in_flight.labels(pool=name))

    @property
    def in_flight(self) -> float:
        return value(self.metrics.registry, "facegen_swapper_blocking_calls_in_flight", {"pool": self.name})


async def test_pool_runs_in_a_thread_with_the_callers_job_id() -> None:
    pool = Counted("t", 2)
    try:
        with logs.job_context("job-7"):
            seen = await pool.run(lambda: (threading.current_thread().name, logs.job_id_var.get()))
        assert seen[0].startswith("t")
        assert seen[1] == "job-7"
        assert pool.in_flight == 0
    finally:
        pool.shutdown()


async def test_cancelled_await_leaves_a_counted_leftover_that_drain_waits_for() -> None:
    pool = Counted("t", 2)
    release = threading.Event()
    scope = CallScope()
    try:
        task = asyncio.create_task(scope.run(pool, release.wait, 5))
        await until(lambda: pool.in_flight == 1, 2.0)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        assert pool.in_flight == 1 and scope.pending == 1
        assert not await scope.drain(0.05)
        release.set()
        assert await scope.drain(2)
        assert pool.in_flight == 0 and scope.pending == 0
    finally:
        release.set()
        pool.shutdown()


async def test_queued_calls_are_cancelled_by_drain_and_uncounted() -> None:
    pool = Counted("t", 1)
    release = threading.Event()
    scope = CallScope()
    ran = []
    try:
        first = asyncio.ensure_future(scope.run(pool, release.wait, 5))
        second = asyncio.ensure_future(scope.run(pool, ran.append, 1))
        await until(lambda: pool.in_flight == 2, 2.0)
        drained = asyncio.ensure_future(scope.drain(2))
        await asyncio.sleep(0)  # one loop turn: drain cancels the queued call before its first await
        release.set()
        assert await drained
        await asyncio.gather(first, second, return_exceptions=True)
        assert ran == [] and pool.in_flight == 0
    finally:
        release.set()
        pool.shutdown()


async def test_finish_completes_clean_up_despite_repeated_cancellation() -> None:
    done = asyncio.Event()

    async def clean_up() -> str:
        await asyncio.sleep(0.05)
        done.set()
        return "ok"

    outer = asyncio.create_task(finish(clean_up()))
    await asyncio.sleep(0)
    outer.cancel()
    await asyncio.sleep(0)
    outer.cancel()
    with pytest.raises(asyncio.CancelledError):
        await outer
    assert done.is_set()


async def test_finish_returns_the_result_when_not_cancelled() -> None:
    async def work() -> int:
        return 42

    assert await finish(work()) == 42
