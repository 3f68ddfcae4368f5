"""Several gateway replicas on one Redis behave as one system.

In-process replicas cover what needs no crash (any replica serves any job,
idempotency and admission across replicas); replicas as real processes are
SIGKILLed and SIGTERMed mid-job, against the fake generator and swapper.
"""

from __future__ import annotations

import asyncio
import signal
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from facegen.v1 import common_pb2, gateway_pb2
from services.common.redis import RedisSettings
from services.gateway.admission import AdmissionLimits
from services.gateway.redis_store import RedisJobStore
from services.gateway.store import NewJob
from services.gateway.validation import JobSpec
from tests.fakes.grpc_upstreams import FakeUpstreams
from tests.gateway_process import GatewayProcess
from tests.integration.gateway.conftest import GatewayFactory
from tests.integration.gateway.support import check_stream, collect, job_request
from tests.redis_server import RedisServer
from tests.waiting import until

pytestmark = pytest.mark.integration

Replicas = Callable[..., Awaitable[list[GatewayProcess]]]
LEASE_SECONDS = 1.0


@pytest.fixture
def store_kind() -> str:
    return "redis"


async def test_a_job_submitted_on_one_replica_is_watched_read_and_cancelled_through_another(
        start_gateway: GatewayFactory, upstreams: FakeUpstreams) -> None:
    a, b = await start_gateway(), await start_gateway()
    upstreams.generator.script.gate = asyncio.Event()
    submitted = await a.stub.Submit(job_request())
    await upstreams.generator.wait_for(lambda g: g.active == 1)
    job = await b.stub.Get(gateway_pb2.GetRequest(job_id=submitted.job_id))
    assert job.state == gateway_pb2.JOB_STATE_RUNNING
    watching = asyncio.ensure_future(collect(b.stub.Watch(gateway_pb2.WatchRequest(job_id=submitted.job_id))))
    started = time.monotonic()
    cancelled = await b.stub.Cancel(gateway_pb2.CancelRequest(job_id=submitted.job_id))
    assert cancelled.state == gateway_pb2.JOB_STATE_CANCELLED
    assert time.monotonic() - started < 1.0, "a cancel through any replica ends the job within 1 s"
    await upstreams.generator.wait_for(lambda g: submitted.job_id in g.cancelled)
    events = await asyncio.wait_for(watching, 5)
    assert check_stream(events).code == "CANCELLED"


async def test_idempotency_and_admission_hold_across_replicas(
        start_gateway: GatewayFactory, upstreams: FakeUpstreams) -> None:
    a = await start_gateway(max_running_jobs=1, max_queued_jobs=1)
    b = await start_gateway(max_running_jobs=1, max_queued_jobs=1)
    upstreams.generator.script.gate = gate = asyncio.Event()
    first = await a.stub.Submit(job_request(idempotency_key="order-1"))
    again = await b.stub.Submit(job_request(idempotency_key="order-1"))
    assert (again.job_id, again.created) == (first.job_id, False)
    with pytest.raises(grpc.aio.AioRpcError) as conflict:
        await b.stub.Submit(job_request(idempotency_key="order-1", prompt="another picture"))
    assert conflict.value.code() == grpc.StatusCode.ALREADY_EXISTS
    assert first.job_id in (conflict.value.details() or "")
    second = await b.stub.Submit(job_request())
    for replica in (a, b):
        with pytest.raises(grpc.aio.AioRpcError) as full:
            await replica.stub.Submit(job_request())
        assert full.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    await upstreams.generator.wait_for(lambda g: g.active == 1)
    assert upstreams.generator.calls == 1, "one job runs in the whole deployment; the other waits"
    gate.set()
    for job_id in (first.job_id, second.job_id):
        events = await collect(a.stub.Watch(gateway_pb2.WatchRequest(job_id=job_id)))
        assert check_stream(events).state == gateway_pb2.JOB_STATE_COMPLETED


@pytest.fixture
async def replicas(upstreams: FakeUpstreams, redis_server: RedisServer,
                   tmp_path: Path) -> AsyncIterator[Replicas]:
    with redis_server.client() as client:
        client.flushall()
    started: list[GatewayProcess] = []

    async def start(count: int = 2, **env: str) -> list[GatewayProcess]:
        settings = {"GENERATOR_ADDRESS": upstreams.generator_address, "SWAPPER_ADDRESS": upstreams.swapper_address,
                    "GATEWAY_STORE": "redis", "REDIS_URL": redis_server.url,
                    "GATEWAY_LEASE_SECONDS": str(LEASE_SECONDS), "GATEWAY_GRACE_SECONDS": "0.5", **env}
        made = [GatewayProcess(f"gw-{len(started) + number}", tmp_path, settings) for number in range(count)]
        started.extend(made)
        await asyncio.gather(*(replica.start() for replica in made))
        return made

    yield start
    for replica in started:
        await replica.close()


def holder(redis: RedisServer, job_id: str) -> str:
    """The replica that holds the job's lease now."""
    with redis.client() as client:
        owner = client.hget(f"facegen:job:{{{job_id}}}", "owner")
    return (owner or b"").decode()


async def events_until(stream: AsyncIterator[gateway_pb2.JobEvent],
                       stop: Callable[[gateway_pb2.JobEvent], bool]) -> list[gateway_pb2.JobEvent]:
    """Events of a stream up to the first one for which ``stop`` is true."""
    seen = []
    async for event in stream:
        seen.append(event)
        if stop(event):
            break
    return seen


async def kill_holder_and_resume(replicas: list[GatewayProcess], redis: RedisServer, job_id: str,
                                 stop: Callable[[gateway_pb2.JobEvent], bool]) -> tuple[list[gateway_pb2.JobEvent],
                                                                                       float]:
    """Watches the job on its holder until ``stop``, SIGKILLs the holder, and follows the job to its end
    on the survivor from the last event seen. Returns every event and the seconds from the kill to the
    survivor's first event."""
    owner = holder(redis, job_id)
    victim = next(replica for replica in replicas if replica.name == owner)
    survivor = next(replica for replica in replicas if replica is not victim)
    stream = victim.stub.Watch(gateway_pb2.WatchRequest(job_id=job_id))
    seen = await events_until(stream, stop)
    await victim.kill()
    killed = time.monotonic()
    with pytest.raises(grpc.aio.AioRpcError) as broken:
        await events_until(stream, lambda _event: False)
    assert broken.value.code() == grpc.StatusCode.UNAVAILABLE
    rest = survivor.stub.Watch(gateway_pb2.WatchRequest(job_id=job_id, after_seq=seen[-1].seq))
    after: list[gateway_pb2.JobEvent] = []
    first_after_kill = 0.0
    async with asyncio.timeout(30):
        async for event in rest:
            if not after:
                first_after_kill = time.monotonic() - killed
            after.append(event)
    return seen + after, first_after_kill


async def test_a_job_survives_the_sigkill_of_its_gateway_during_generation(
        replicas: Replicas, upstreams: FakeUpstreams, redis_server: RedisServer) -> None:
    upstreams.generator.script.steps, upstreams.generator.script.step_delay = 12, 0.25
    gateways = await replicas(2)
    submitted = await gateways[0].stub.Submit(job_request(seed=42, num_images=2))
    await upstreams.generator.wait_for(lambda g: g.active == 1)
    events, failover_s = await kill_holder_and_resume(
        gateways, redis_server, submitted.job_id, lambda event: event.denoise.step >= 2)
    result = check_stream(events)
    assert result.state == gateway_pb2.JOB_STATE_COMPLETED
    assert [(image.index, image.seed) for image in result.images] == [(0, 42), (1, 43)]
    assert sum(event.resumed for event in events) == 1
    assert failover_s < LEASE_SECONDS + 2.5, f"the job went on {failover_s:.1f} s after the kill"
    calls = [(r.seed, r.num_images) for r in upstreams.generator.requests if r.job_id == submitted.job_id]
    assert calls == [(42, 2), (42, 2)], "nothing was stored yet, so both images are made again, the same"


async def test_a_job_survives_the_sigkill_of_its_gateway_while_its_remote_swap_runs(
        replicas: Replicas, upstreams: FakeUpstreams, redis_server: RedisServer) -> None:
    upstreams.swapper.script.delay = 4.0
    gateways = await replicas(2)
    submitted = await gateways[1].stub.Submit(job_request())
    events, _ = await kill_holder_and_resume(
        gateways, redis_server, submitted.job_id, lambda event: event.remote.status == "IN_QUEUE")
    result = check_stream(events)
    assert result.state == gateway_pb2.JOB_STATE_COMPLETED
    assert sum(event.resumed for event in events) == 1
    assert len(upstreams.generator.requests) == 1, "the image was stored: it is not generated again"
    calls = [call for call in upstreams.swapper.swaps if call.job_id == submitted.job_id]
    assert [(call.target_key, call.resumable) for call in calls] == [
        ("", True), (f"tmp/{submitted.job_id}/0.png", True)]
    assert len({remote for key, remote in upstreams.swapper.remote_jobs.items() if key[0] == submitted.job_id}) == 1
    assert any("still followed on" in event.message for event in events)


async def test_sigterm_drains_a_replica_without_cancelling_its_jobs(
        replicas: Replicas, upstreams: FakeUpstreams, redis_server: RedisServer) -> None:
    upstreams.generator.script.steps, upstreams.generator.script.step_delay = 6, 0.2
    gateways = await replicas(2, GATEWAY_DRAIN_SECONDS="20")
    short = await gateways[0].stub.Submit(job_request())
    await upstreams.generator.wait_for(lambda g: g.active == 1)
    owner = next(replica for replica in gateways if replica.name == holder(redis_server, short.job_id))
    other = next(replica for replica in gateways if replica is not owner)
    owner.terminate()
    assert await owner.wait(30) == 0
    events = await collect(other.stub.Watch(gateway_pb2.WatchRequest(job_id=short.job_id)))
    result = check_stream(events)
    assert result.state == gateway_pb2.JOB_STATE_COMPLETED, "the draining replica finished its job"
    assert not any(event.resumed for event in events)
    assert short.job_id not in upstreams.generator.cancelled


async def test_a_job_still_running_when_the_drain_ends_is_handed_over_not_cancelled(
        replicas: Replicas, upstreams: FakeUpstreams, redis_server: RedisServer) -> None:
    upstreams.generator.script.gate = gate = asyncio.Event()
    gateways = await replicas(2, GATEWAY_DRAIN_SECONDS="0.5")
    long = await gateways[0].stub.Submit(job_request())
    await upstreams.generator.wait_for(lambda g: g.active == 1)
    owner = next(replica for replica in gateways if replica.name == holder(redis_server, long.job_id))
    other = next(replica for replica in gateways if replica is not owner)
    owner.terminate()
    assert await owner.wait(30) == 0
    await upstreams.generator.wait_for(lambda g: g.calls == 2 and g.active == 1, within=10)
    gate.set()
    events = await collect(other.stub.Watch(gateway_pb2.WatchRequest(job_id=long.job_id)))
    result = check_stream(events)
    assert result.state == gateway_pb2.JOB_STATE_COMPLETED
    assert [event.resumed for event in events].count(True) == 1
    assert "gw-" in next(event.message for event in events if event.resumed)


async def test_a_redis_restart_mid_job_loses_nothing_and_is_reported_clearly(
        start_gateway: GatewayFactory, upstreams: FakeUpstreams, tmp_path: Path) -> None:
    redis = RedisServer(tmp_path / "redis", appendonly=True, fsync="always").start()
    try:
        gateway = await start_gateway(redis=RedisSettings(url=redis.url))
        upstreams.generator.script.steps, upstreams.generator.script.step_delay = 12, 0.25
        submitted = await gateway.stub.Submit(job_request())
        await upstreams.generator.wait_for(lambda g: g.active == 1)
        health = health_pb2_grpc.HealthStub(gateway.channel)
        redis.stop(signal.SIGKILL)
        await until_health(health, health_pb2.HealthCheckResponse.NOT_SERVING)
        for call in (gateway.stub.Submit(job_request()),
                     gateway.stub.Get(gateway_pb2.GetRequest(job_id=submitted.job_id))):
            started = time.monotonic()
            with pytest.raises(grpc.aio.AioRpcError) as down:
                await call
            assert down.value.code() == grpc.StatusCode.UNAVAILABLE
            assert "job store is unavailable" in (down.value.details() or "")
            assert time.monotonic() - started < 3, "no hang while Redis is down"
        await upstreams.generator.wait_for(lambda g: g.active == 0, within=10)
        redis.start()
        await until_health(health, health_pb2.HealthCheckResponse.SERVING)
        events = await asyncio.wait_for(collect(gateway.stub.Watch(
            gateway_pb2.WatchRequest(job_id=submitted.job_id))), 20)
        result = check_stream(events)
        assert result.state == gateway_pb2.JOB_STATE_COMPLETED, "the job went on and its events landed"
        assert [event.denoise.step for event in events if event.HasField("denoise")] == list(range(1, 13))
    finally:
        redis.stop()


async def until_health(health: health_pb2_grpc.HealthStub, status: int, within_s: float = 10.0) -> None:
    """Waits until the gateway reports ``status``."""
    updates = health.Watch(health_pb2.HealthCheckRequest())
    try:
        async with asyncio.timeout(within_s):
            async for reply in updates:
                if reply.status == status:
                    return
    finally:
        updates.cancel()


async def test_a_resumable_swap_whose_swapper_is_lost_goes_on_on_another_call(
        start_gateway: GatewayFactory, upstreams: FakeUpstreams) -> None:
    gateway = await start_gateway()
    upstreams.swapper.script.fail = {0: (grpc.StatusCode.UNAVAILABLE, "swapper pod lost")}
    upstreams.swapper.script.fail_calls = 1
    events = await collect(gateway.stub.Run(job_request()))
    assert check_stream(events).state == gateway_pb2.JOB_STATE_COMPLETED
    calls = upstreams.swapper.swaps
    job_id = events[0].job_id
    assert [(call.target_key, call.resumable) for call in calls] == [
        ("", True), (f"tmp/{job_id}/0.png", True)], "the second call goes on from the stored image"
    assert len(upstreams.generator.requests) == 1


async def test_a_full_redis_delays_a_jobs_events_and_loses_none(tmp_path: Path) -> None:
    redis = RedisServer(tmp_path / "redis", appendonly=False).start()
    store = RedisJobStore(RedisSettings(url=redis.url), AdmissionLimits(2, 2), 60, 100, 30, "gw")
    try:
        await store.start(lambda _job, _reason: None)
        await until(lambda: store.healthy, 5, "the store reports healthy")
        spec = JobSpec(generate=None, num_images=1, swap_options=common_pb2.SwapOptions(), reference_key="refs/k")
        first = gateway_pb2.JobEvent(job_id="j", seq=1, stage=gateway_pb2.STAGE_QUEUED)
        await store.create(NewJob("j", spec, first))
        lease = await store.claim("gw")
        assert lease is not None
        with redis.client() as client:
            client.config_set("maxmemory-policy", "noeviction")
            client.config_set("maxmemory", int(client.info("memory")["used_memory"]) // 2)
            for number in range(3):
                await store.append(lease, gateway_pb2.JobEvent(job_id="j", message=f"step {number}"),
                                   gateway_pb2.JOB_STATE_RUNNING)
            assert not await store.flushed(lease, within=1.0), "Redis refuses writes while it is full"
            assert await store.get("j") is not None
            client.config_set("maxmemory", 0)
        assert await store.flushed(lease, within=5.0), "the events land once Redis has room, the lease kept"
        messages = []
        async with asyncio.timeout(5):
            async for event in store.watch("j", 0):
                messages.append(event.message)
                if event.seq == 4:
                    break
        assert messages == ["", "step 0", "step 1", "step 2"]
    finally:
        await store.close()
        redis.stop()
