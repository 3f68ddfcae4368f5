"""The in-memory job store: ordering, replay, bounds and expiry."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest

from facegen.v1 import gateway_pb2
from services.common.errors import NotFound, ResourceExhausted
from services.gateway.store import InMemoryJobStore

pytestmark = pytest.mark.unit

RUNNING, COMPLETED = gateway_pb2.JOB_STATE_RUNNING, gateway_pb2.JOB_STATE_COMPLETED


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def event(job_id: str, seq: int, terminal: bool = False, preview: bytes = b"") -> gateway_pb2.JobEvent:
    stage = gateway_pb2.STAGE_TERMINAL if terminal else gateway_pb2.STAGE_GENERATING
    ev = gateway_pb2.JobEvent(job_id=job_id, seq=seq, stage=stage, percent=float(seq),
                              message=f"event {seq}")
    if preview:
        ev.denoise.preview_png = preview
    if terminal:
        ev.result.state = COMPLETED
        ev.result.code = "OK"
    return ev


async def fill(store: InMemoryJobStore, job_id: str, count: int, finish: bool = True) -> None:
    for seq in range(1, count + 1):
        last = finish and seq == count
        await store.append(job_id, event(job_id, seq, terminal=last), COMPLETED if last else RUNNING)


async def collect(store: InMemoryJobStore, job_id: str, after: int) -> list[int]:
    return [ev.seq async for ev in store.watch(job_id, after)]


async def test_watch_replays_events_after_the_given_seq_then_ends_at_the_terminal_one() -> None:
    store = InMemoryJobStore(60, 10, 100)
    await store.create("j")
    await fill(store, "j", 6)
    assert await collect(store, "j", 0) == [1, 2, 3, 4, 5, 6]
    assert await collect(store, "j", 4) == [5, 6]
    assert await collect(store, "j", 6) == []
    job = await store.get("j")
    assert job is not None
    assert (job.state, job.last_seq, job.percent, job.result.code) == (COMPLETED, 6, 6.0, "OK")


async def test_watch_follows_live_events_until_the_terminal_one() -> None:
    store = InMemoryJobStore(60, 10, 100)
    await store.create("j")
    await fill(store, "j", 2, finish=False)
    watcher = asyncio.create_task(collect(store, "j", 1))
    await asyncio.sleep(0)
    for seq in (3, 4):
        await store.append("j", event("j", seq), RUNNING)
    assert not watcher.done()
    await store.append("j", event("j", 5, terminal=True), COMPLETED)
    assert await asyncio.wait_for(watcher, 5) == [2, 3, 4, 5]


async def test_unknown_jobs_are_not_found() -> None:
    store = InMemoryJobStore(60, 10, 100)
    assert await store.get("nope") is None
    with pytest.raises(NotFound, match="nope"):
        await collect(store, "nope", 0)


async def test_an_idempotency_key_returns_the_same_job() -> None:
    store = InMemoryJobStore(60, 10, 100)
    assert await store.create("a", "key-1") == ("a", True)
    assert await store.create("b", "key-1") == ("a", False)
    assert await store.find("key-1") == "a"
    assert await store.get("b") is None


async def test_finished_jobs_expire_after_the_ttl_with_their_idempotency_key() -> None:
    clock = Clock()
    store = InMemoryJobStore(ttl_seconds=60, max_jobs=10, max_events=100, clock=clock)
    await store.create("done", "key-done")
    await store.create("running")
    await fill(store, "done", 3)
    await fill(store, "running", 3, finish=False)
    clock.now += 59
    assert await store.get("done") is not None
    clock.now += 2
    assert await store.get("done") is None
    assert await store.find("key-done") is None
    assert await store.get("running") is not None, "jobs that have not ended never expire"
    assert len(store) == 1


async def test_the_oldest_finished_job_makes_room_and_a_store_full_of_running_jobs_refuses() -> None:
    store = InMemoryJobStore(ttl_seconds=3600, max_jobs=2, max_events=100)
    await store.create("first")
    await store.create("second")
    await fill(store, "second", 2)
    await fill(store, "first", 2)
    await store.create("third")
    assert await store.get("second") is None, "second ended first, so it goes first"
    assert await store.get("first") is not None
    await store.create("fourth")
    with pytest.raises(ResourceExhausted, match="at most 2 jobs"):
        await store.create("fifth")
    assert len(store) == 2


async def test_history_is_bounded_and_keeps_the_newest_events() -> None:
    store = InMemoryJobStore(60, 10, max_events=16)
    await store.create("j")
    await fill(store, "j", 40)
    assert await collect(store, "j", 0) == list(range(25, 41))
    assert await collect(store, "j", 30) == list(range(31, 41))


async def test_only_the_newest_preview_is_kept() -> None:
    store = InMemoryJobStore(60, 10, 100)
    await store.create("j")
    for seq in (1, 2, 3):
        await store.append("j", event("j", seq, preview=b"preview-%d" % seq), RUNNING)
    previews = [ev.denoise.preview_png async for ev in _first(store.watch("j", 0), 3)]
    assert previews == [b"", b"", b"preview-3"]


async def _first(events: AsyncIterator[gateway_pb2.JobEvent],
                 count: int) -> AsyncIterator[gateway_pb2.JobEvent]:
    seen = 0
    async for ev in events:
        yield ev
        seen += 1
        if seen == count:
            return


async def test_events_after_the_terminal_one_are_ignored() -> None:
    store = InMemoryJobStore(60, 10, 100)
    await store.create("j")
    await fill(store, "j", 2)
    await store.append("j", event("j", 3), RUNNING)
    job = await store.get("j")
    assert job is not None
    assert (job.state, job.last_seq) == (COMPLETED, 2)
