"""The wait queue: bounded, positions, and which jobs share a pipeline call."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from dataclasses import replace

import pytest

from facegen.v1 import generator_pb2
from services.common.errors import ResourceExhausted
from services.generator.batcher import Batcher
from services.generator.jobs import Job
from services.generator.params import GenerationParams, LoraChoice

pytestmark = pytest.mark.unit

PARAMS = GenerationParams(job_id="j", model="m", family="sd", prompt="p", negative_prompt="", width=64,
                          height=64, steps=2, guidance=5.0, seeds=(1,), lora=None, preview_every=0)


class Device:
    """A fake device: records batches and holds each one until released."""

    def __init__(self) -> None:
        self.batches: list[list[str]] = []
        self.started = asyncio.Queue[list[str]]()
        self.release = asyncio.Event()

    async def execute(self, batch: list[Job]) -> None:
        names = [job.params.job_id for job in batch]
        self.batches.append(names)
        await self.started.put(names)
        await self.release.wait()


def job(name: str, **changes: object) -> Job:
    return Job(replace(PARAMS, job_id=name, **changes), asyncio.get_running_loop())  # type: ignore[arg-type]


def positions(job: Job) -> list[int]:
    events: list[generator_pb2.GenerateEvent] = []
    while not job._events.empty():
        item = job._events.get_nowait()
        assert isinstance(item, generator_pb2.GenerateEvent)
        events.append(item)
    return [event.queued.position for event in events if event.WhichOneof("event") == "queued"]


@contextlib.asynccontextmanager
async def running(batcher: Batcher) -> AsyncIterator[None]:
    task = asyncio.create_task(batcher.run())
    try:
        yield
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


async def test_compatible_jobs_arriving_within_the_window_share_a_batch() -> None:
    device = Device()
    device.release.set()
    batcher = Batcher(device.execute, queue_size=10, window_s=30.0, max_images=3)
    async with running(batcher):
        batcher.submit(job("a"))
        batcher.submit(job("other-size", width=128))
        batcher.submit(job("b", prompt="another prompt", seeds=(7,)))
        batcher.submit(job("c"))
        # The cap (3 images) is reached, so the batch starts without waiting out the window.
        assert await asyncio.wait_for(device.started.get(), 5) == ["a", "b", "c"]
    assert batcher.waiting == 1


async def test_batch_respects_the_image_cap_and_keeps_order() -> None:
    device = Device()
    device.release.set()
    batcher = Batcher(device.execute, queue_size=10, window_s=0.0, max_images=4)
    batcher.submit(job("a", seeds=(1, 2, 3)))
    batcher.submit(job("b", seeds=(1, 2)))
    batcher.submit(job("c"))
    async with running(batcher):
        assert await asyncio.wait_for(device.started.get(), 5) == ["a", "c"]
        assert await asyncio.wait_for(device.started.get(), 5) == ["b"]


async def test_different_lora_or_negative_prompt_runs_separately() -> None:
    device = Device()
    device.release.set()
    batcher = Batcher(device.execute, queue_size=10, window_s=0.0, max_images=8)
    batcher.submit(job("plain"))
    batcher.submit(job("lora", lora=LoraChoice("style", 1.0)))
    batcher.submit(job("negative", negative_prompt="blurry"))
    batcher.submit(job("plain-2"))
    async with running(batcher):
        got = [await asyncio.wait_for(device.started.get(), 5) for _ in range(3)]
    assert got == [["plain", "plain-2"], ["lora"], ["negative"]]


async def test_max_batch_one_disables_batching() -> None:
    device = Device()
    device.release.set()
    batcher = Batcher(device.execute, queue_size=10, window_s=10.0, max_images=1)
    batcher.submit(job("a"))
    batcher.submit(job("b"))
    async with running(batcher):
        assert await asyncio.wait_for(device.started.get(), 5) == ["a"]
        assert await asyncio.wait_for(device.started.get(), 5) == ["b"]


async def test_queue_is_bounded() -> None:
    batcher = Batcher(Device().execute, queue_size=2, window_s=0.0, max_images=1)
    batcher.submit(job("a"))
    batcher.submit(job("b"))
    with pytest.raises(ResourceExhausted, match=r"queue is full \(2 requests waiting\)"):
        batcher.submit(job("c"))
    assert batcher.waiting == 2


async def test_positions_are_sent_when_they_change() -> None:
    device = Device()
    batcher = Batcher(device.execute, queue_size=10, window_s=0.0, max_images=1)
    a, b, c = job("a"), job("b"), job("c")
    async with running(batcher):
        batcher.submit(a)
        assert await asyncio.wait_for(device.started.get(), 5) == ["a"]  # a holds the device
        batcher.submit(b)
        batcher.submit(c)
        assert positions(a) == [0] and positions(b) == [0] and positions(c) == [1]
        assert batcher.withdraw(b) is True
        assert batcher.withdraw(b) is False
        assert positions(c) == [0]
        device.release.set()
        assert await asyncio.wait_for(device.started.get(), 5) == ["c"]


async def test_first_job_cancelled_during_its_window_is_skipped() -> None:
    device = Device()
    device.release.set()
    batcher = Batcher(device.execute, queue_size=10, window_s=60.0, max_images=8)
    async with running(batcher):
        first = job("first")
        batcher.submit(first)
        await asyncio.sleep(0)  # one loop turn: the worker takes `first` and waits for company
        batcher.withdraw(first)
        batcher.submit(job("next", seeds=(1, 2, 3, 4, 5, 6, 7, 8)))
        assert await asyncio.wait_for(device.started.get(), 5) == ["next"]
    assert device.batches == [["next"]]


async def test_a_crashing_batch_fails_its_jobs_and_the_worker_goes_on() -> None:
    calls: list[list[str]] = []

    async def execute(batch: list[Job]) -> None:
        calls.append([job.params.job_id for job in batch])
        if len(calls) == 1:
            raise RuntimeError("bug")
        for job in batch:
            job.finish()

    batcher = Batcher(execute, queue_size=10, window_s=0.0, max_images=1)
    crashed, fine = job("crashed"), job("fine")
    batcher.submit(crashed)
    batcher.submit(fine)
    async with running(batcher):
        with pytest.raises(RuntimeError, match="bug"):
            async for _ in crashed.events():
                pass
        assert [event.WhichOneof("event") async for event in fine.events()] == ["queued", "queued"]
    assert calls == [["crashed"], ["fine"]]
