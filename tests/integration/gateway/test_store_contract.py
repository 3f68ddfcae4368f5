"""One contract, two job stores: every test runs against the in-memory store and a real Redis.

The Redis store is the one several gateway replicas share; "gateways" here
are store instances with different owner names on the same Redis server.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable

import pytest

from facegen.v1 import common_pb2, gateway_pb2, generator_pb2
from services.common.errors import NotFound, ResourceExhausted
from services.common.redis import RedisSettings
from services.gateway.admission import AdmissionLimits
from services.gateway.memory_store import InMemoryJobStore
from services.gateway.redis_store import RedisJobStore
from services.gateway.store import ImageCheckpoint, JobStore, Lease, LeaseLost, NewJob
from services.gateway.validation import JobSpec
from tests.redis_server import RedisServer
from tests.waiting import until

pytestmark = pytest.mark.integration

RUNNING, COMPLETED = gateway_pb2.JOB_STATE_RUNNING, gateway_pb2.JOB_STATE_COMPLETED


class StoreFactory:
    """Makes stores of one kind for a test, and records the cancel requests they report."""

    def __init__(self, make: Callable[..., Awaitable[JobStore]]) -> None:
        self._make = make
        self.cancels: list[tuple[str, str]] = []

    async def __call__(self, **settings: object) -> JobStore:
        return await self._make(self, **settings)

    def on_cancel(self, job_id: str, reason: str) -> None:
        self.cancels.append((job_id, reason))


@pytest.fixture(params=["memory", "redis"])
async def make_store(request: pytest.FixtureRequest) -> AsyncIterator[StoreFactory]:
    """Builds stores of one kind; Redis ones share one server (flushed for each test), like replicas."""
    kind = request.param
    made: list[JobStore] = []
    memory: InMemoryJobStore | None = None
    if kind == "redis":
        server: RedisServer = request.getfixturevalue("redis_server")
        with server.client() as client:
            client.flushall()

    async def make(factory: StoreFactory, max_running: int = 4, max_queued: int = 4, max_events: int = 100,
                   lease_seconds: float = 30.0, owner: str = "gw-a") -> JobStore:
        nonlocal memory
        limits = AdmissionLimits(max_running, max_queued)
        store: JobStore
        if kind == "memory":
            # One process has one store: every "gateway" of a memory test shares it.
            if memory is None:
                memory = InMemoryJobStore(3600, 100, max_events, limits)
                await memory.start(factory.on_cancel)
                made.append(memory)
            return memory
        store = RedisJobStore(RedisSettings(url=server.url), limits, 3600, max_events, lease_seconds, owner)
        await store.start(factory.on_cancel)
        await until(lambda: store.healthy, 5, "the Redis store reports healthy")
        made.append(store)
        return store

    yield StoreFactory(make)
    for store in made:
        await store.close()


def spec(num_images: int = 1, key: str = "") -> JobSpec:
    generate = generator_pb2.GenerateRequest(prompt="a portrait", num_images=num_images, seed=7)
    return JobSpec(generate=generate, num_images=num_images, swap_options=common_pb2.SwapOptions(mouth_mask=True),
                   reference_key="refs/" + "a" * 64 + ".png", idempotency_key=key, summary={"mode": "generate"})


def new_job(key: str = "", digest: str = "", **images: ImageCheckpoint) -> NewJob:
    job_id = uuid.uuid4().hex
    first = gateway_pb2.JobEvent(job_id=job_id, seq=1, stage=gateway_pb2.STAGE_QUEUED, message="accepted")
    return NewJob(job_id, spec(key=key), first, key, digest,
                  {int(index.removeprefix("image")): point for index, point in images.items()})


def event(lease: Lease, message: str, terminal: bool = False, preview: bytes = b"") -> gateway_pb2.JobEvent:
    stage = gateway_pb2.STAGE_TERMINAL if terminal else gateway_pb2.STAGE_GENERATING
    ev = gateway_pb2.JobEvent(job_id=lease.job_id, stage=stage, percent=50.0, message=message)
    if preview:
        ev.denoise.preview_png = preview
    if terminal:
        ev.result.state, ev.result.code = COMPLETED, "OK"
    return ev


async def claim(store: JobStore, owner: str = "gw-a") -> Lease:
    lease = await store.claim(owner)
    assert lease is not None, "a job should have been claimable"
    return lease


async def run_to_end(store: JobStore, lease: Lease, steps: int = 2) -> None:
    for number in range(steps):
        await store.append(lease, event(lease, f"step {number}"), RUNNING)
    await store.append(lease, event(lease, "done", terminal=True), COMPLETED)
    assert await store.flushed(lease, 5)
    await store.finish(lease)


async def collect(store: JobStore, job_id: str, after: int = 0) -> list[gateway_pb2.JobEvent]:
    async with asyncio.timeout(10):
        return [ev async for ev in store.watch(job_id, after)]


async def test_a_job_is_created_with_its_first_event_claimed_run_and_replayed(make_store: StoreFactory) -> None:
    store = await make_store()
    job = new_job()
    created = await store.create(job)
    assert (created.job_id, created.created) == (job.job_id, True)
    snapshot = await store.get(job.job_id)
    assert snapshot is not None
    assert (snapshot.state, snapshot.stage, snapshot.last_seq) == (
        gateway_pb2.JOB_STATE_QUEUED, gateway_pb2.STAGE_QUEUED, 1)
    lease = await claim(store)
    assert (lease.job_id, lease.last_seq, lease.epoch, lease.resumed) == (job.job_id, 1, 1, False)
    assert lease.spec.generate is not None and lease.spec.generate.seed == 7
    assert lease.spec.swap_options.mouth_mask and lease.spec.reference_key == job.spec.reference_key
    await run_to_end(store, lease, steps=3)
    events = await collect(store, job.job_id)
    assert [ev.seq for ev in events] == [1, 2, 3, 4, 5]
    assert [ev.message for ev in events] == ["accepted", "step 0", "step 1", "step 2", "done"]
    assert [ev.seq for ev in await collect(store, job.job_id, after=3)] == [4, 5]
    snapshot = await store.get(job.job_id)
    assert snapshot is not None
    assert (snapshot.state, snapshot.last_seq, snapshot.result.code) == (COMPLETED, 5, "OK")


async def test_a_watcher_sees_live_events_exactly_once_and_in_order_until_the_terminal_one(
        make_store: StoreFactory) -> None:
    writer = await make_store(owner="gw-a")
    reader = await make_store(owner="gw-b")
    job = new_job()
    await writer.create(job)
    lease = await claim(writer)
    watching = asyncio.create_task(collect(reader, job.job_id))
    for number in range(20):
        await writer.append(lease, event(lease, f"step {number}"), RUNNING)
    assert not watching.done()
    await writer.append(lease, event(lease, "done", terminal=True), COMPLETED)
    events = await asyncio.wait_for(watching, 10)
    assert [ev.seq for ev in events] == list(range(1, 23))


async def test_unknown_jobs_are_not_found(make_store: StoreFactory) -> None:
    store = await make_store()
    assert await store.get("nope") is None
    with pytest.raises(NotFound, match="nope"):
        await collect(store, "nope")
    with pytest.raises(NotFound, match="nope"):
        await store.request_cancel("nope", "because", "gw-a")


async def test_an_idempotency_key_names_one_job_with_the_fingerprint_of_its_request(
        make_store: StoreFactory) -> None:
    first, second = await make_store(owner="gw-a"), await make_store(owner="gw-b")
    job = new_job(key="order-1", digest="digest-1")
    assert (await first.create(job)).created
    again = await second.create(new_job(key="order-1", digest="digest-2"))
    assert (again.job_id, again.created) == (job.job_id, False)
    assert await second.find("order-1") == (job.job_id, "digest-1")
    assert await second.find("order-2") is None


async def test_admission_holds_running_and_queued_limits_for_every_gateway_together(
        make_store: StoreFactory) -> None:
    first = await make_store(max_running=1, max_queued=1, owner="gw-a")
    second = await make_store(max_running=1, max_queued=1, owner="gw-b")
    running, waiting = new_job(), new_job()
    await first.create(running)
    await second.create(waiting)
    with pytest.raises(ResourceExhausted, match="at capacity"):
        await first.create(new_job())
    assert await second.place_for_new_job() is None
    lease = await claim(first, "gw-a")
    assert lease.job_id == running.job_id
    assert await second.claim("gw-b") is None, "the one running slot is taken"
    assert await first.place_for_new_job() is None
    await run_to_end(first, lease)
    assert (await claim(second, "gw-b")).job_id == waiting.job_id
    assert await first.place_for_new_job() == 0, "room again: next in line behind the running job"


async def test_a_queued_job_cancelled_is_handed_to_the_canceller_who_ends_it(make_store: StoreFactory) -> None:
    store = await make_store(max_running=1)
    busy, queued = new_job(), new_job()
    await store.create(busy)
    await store.create(queued)
    await claim(store)
    lease = await store.request_cancel(queued.job_id, "cancelled by a Cancel request", "gw-b")
    assert lease is not None
    assert (lease.job_id, lease.owner, lease.cancel_reason) == (
        queued.job_id, "gw-b", "cancelled by a Cancel request")
    await run_to_end(store, lease, steps=0)
    assert await store.claim("gw-a") is None, "the cancelled job left the queue"


async def test_cancelling_a_running_job_tells_its_holder_and_its_next_renewal(make_store: StoreFactory) -> None:
    holder = await make_store(owner="gw-a")
    other = await make_store(owner="gw-b")
    job = new_job()
    await holder.create(job)
    lease = await claim(holder)
    assert await other.request_cancel(job.job_id, "stop it", "gw-b") is None
    await until(lambda: (job.job_id, "stop it") in make_store.cancels, 5, "the holder hears of the cancel")
    assert await holder.renew([lease]) in ({}, {job.job_id: "stop it"})
    if isinstance(holder, RedisJobStore):
        assert await holder.renew([lease]) == {job.job_id: "stop it"}
    await run_to_end(holder, lease, steps=0)
    assert await other.request_cancel(job.job_id, "again", "gw-b") is None


async def test_a_released_job_is_resumed_with_its_checkpoints_and_its_old_holder_cannot_write(
        make_store: StoreFactory) -> None:
    first = await make_store(owner="gw-a")
    second = await make_store(owner="gw-b")
    target = ImageCheckpoint(stored_key="tmp/x/0.png")
    job = new_job(image0=target)
    await first.create(job)
    lease = await claim(first, "gw-a")
    assert lease.images[0].stored_key == "tmp/x/0.png"
    result = gateway_pb2.ImageResult(index=1, url="https://x/1.png", seed=8)
    await first.append(lease, event(lease, "image 1 ready"), RUNNING,
                       {1: ImageCheckpoint(stored_key="tmp/x/1.png", remote_job_id="r1", endpoint="ep",
                                           result=result)})
    await first.append(lease, event(lease, "image 0 submitted"), RUNNING,
                       {0: ImageCheckpoint(stored_key="tmp/x/0.png", remote_job_id="r0", endpoint="ep")})
    assert await first.flushed(lease, 5)
    await first.release(lease)
    resumed = await claim(second, "gw-b")
    assert (resumed.job_id, resumed.last_seq, resumed.epoch, resumed.resumed) == (job.job_id, 3, 2, True)
    assert resumed.previous_owner in ("gw-a", "")
    assert (resumed.images[0].remote_job_id, resumed.images[0].finished) == ("r0", False)
    assert resumed.images[1].result == result
    with pytest.raises(LeaseLost):
        await first.append(lease, event(lease, "too late"), RUNNING)
    await run_to_end(second, resumed, steps=1)
    assert [ev.message for ev in await collect(second, job.job_id)][-3:] == [
        "image 0 submitted", "step 0", "done"]


async def test_the_history_is_capped_and_previews_are_not_kept_but_the_newest(make_store: StoreFactory) -> None:
    store = await make_store(max_events=16)
    job = new_job()
    await store.create(job)
    lease = await claim(store)
    for number in range(40):
        await store.append(lease, event(lease, f"step {number}", preview=b"p%d" % number), RUNNING)
    assert await store.flushed(lease, 5)
    kept = []
    async with asyncio.timeout(5):
        async for ev in store.watch(job.job_id, 0):
            kept.append(ev)
            if ev.seq == 41:
                break
    assert 16 <= len(kept) <= 17 and kept[-1].seq == 41
    assert all(not ev.denoise.preview_png for ev in kept[:-1])


async def test_a_lease_that_is_not_renewed_runs_out_and_another_gateway_resumes_the_job(
        make_store: StoreFactory, request: pytest.FixtureRequest) -> None:
    if "memory" in request.node.callspec.id:
        pytest.skip("leases in one process never run out")
    first = await make_store(owner="gw-a", lease_seconds=0.5)
    second = await make_store(owner="gw-b", lease_seconds=0.5)
    job = new_job()
    await first.create(job)
    lease = await claim(first, "gw-a")
    assert await second.claim("gw-b") is None
    await asyncio.sleep(0.2)
    assert await first.renew([lease]) == {}
    assert await second.claim("gw-b") is None, "a renewed lease is not taken over"

    async def taken_over() -> Lease:
        while True:
            taken = await second.claim("gw-b")
            if taken is not None:
                return taken
            await asyncio.sleep(0.05)

    resumed = await asyncio.wait_for(taken_over(), 5)
    assert (resumed.job_id, resumed.previous_owner, resumed.epoch) == (job.job_id, "gw-a", 2)
    assert await first.renew([lease]) == {job.job_id: None}, "the old holder learns it lost the job"
