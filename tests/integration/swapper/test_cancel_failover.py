"""Caller cancellation, gRPC deadlines, endpoint failover, circuit breaking and the shared rate limit."""

from __future__ import annotations

import asyncio
import time

import grpc
import pytest

from facegen.v1 import common_pb2
from services.stack.runpod_emulator import Fault, JobPlan
from services.stack.runpod_emulator import RunPodEmulator as FakeRunPod
from services.swapper.blocking import BlockingPool, CallScope
from services.swapper.breaker import CircuitBreaker
from services.swapper.endpoints import Endpoint
from services.swapper.jobs import SwapInputs
from services.swapper.ratelimit import EndpointRateLimiter
from services.swapper.remote import RemoteSwapper
from services.swapper.runpod import RunPodClient
from services.swapper.settings import RunPodSettings
from tests.integration.swapper.harness import BACKUP, PRIMARY, MakeSwapper, kinds, result_of, until

pytestmark = pytest.mark.integration


@pytest.mark.parametrize("wait_ms", ["2000", "0"], ids=["long-poll", "polling"])
async def test_caller_cancel_cancels_the_remote_job_once_and_cleans_up(make_swapper: MakeSwapper,
                                                                       wait_ms: str) -> None:
    harness = await make_swapper(FACE_SWAP_STATUS_WAIT_MS=wait_ms)
    harness.fake.endpoint(PRIMARY).plan = JobPlan(queue_s=0.1, run_s=30)
    reference = await harness.put_reference()
    harness.baseline_tasks = set(asyncio.all_tasks())
    call = harness.stub.Swap(harness.request(reference, job_id="cancelled"))
    seen = []
    async for event in call:
        seen.append(event.WhichOneof("event"))
        if event.WhichOneof("event") == "remote_status" and event.remote_status.status == "IN_PROGRESS":
            break
    assert seen == ["stored", "submitted", "remote_status", "remote_status"]
    call.cancel()
    await until(lambda: harness.fake.count("cancel") == 1, 5, "one /cancel")
    job = harness.fake.jobs()[0]
    assert harness.fake.requests[-1].route in ("cancel", "status")
    await harness.assert_quiet()
    assert job.cancelled_at is not None
    assert harness.fake.count("cancel") == 1
    assert harness.objects("results/") == [], "a cancelled swap stores no result"


async def test_cancel_before_submit_sends_no_cancel(make_swapper: MakeSwapper) -> None:
    harness = await make_swapper()
    harness.fake.endpoint(PRIMARY).script("run", Fault.hang(3), 1)
    reference = await harness.put_reference()
    harness.baseline_tasks = set(asyncio.all_tasks())
    call = harness.stub.Swap(harness.request(reference))
    async for event in call:
        assert event.WhichOneof("event") == "stored"
        break
    await until(lambda: harness.fake.count("run") == 1, 5, "the /run request")
    call.cancel()
    await harness.assert_quiet()
    assert harness.fake.count("cancel") == 0


async def test_cancel_while_run_is_in_flight_still_cancels_the_queued_job(make_swapper: MakeSwapper) -> None:
    harness = await make_swapper()
    harness.fake.endpoint(PRIMARY).script("run", Fault.delay(0.5), 1)
    harness.fake.endpoint(PRIMARY).plan = JobPlan(run_s=30)
    reference = await harness.put_reference()
    harness.baseline_tasks = set(asyncio.all_tasks())
    call = harness.stub.Swap(harness.request(reference))
    async for event in call:
        assert event.WhichOneof("event") == "stored"
        break
    await until(lambda: harness.fake.count("run") == 1, 5, "the /run request")
    call.cancel()
    await until(lambda: harness.fake.count("cancel") == 1, 5, "the /cancel of the late job")
    await harness.assert_quiet()
    assert harness.fake.jobs()[0].cancelled_at is not None
    assert harness.fake.count("status") == 0


async def test_short_grpc_deadline_becomes_a_timed_out_fallback(make_swapper: MakeSwapper) -> None:
    harness = await make_swapper(FACE_SWAP_DEADLINE_SECONDS="60")
    harness.fake.endpoint(PRIMARY).plan = JobPlan(run_s=30)
    reference = await harness.put_reference()
    started = time.monotonic()
    events = await harness.swap(harness.request(reference), rpc_timeout_s=2.5)
    assert time.monotonic() - started < 2.5
    result = result_of(events)
    assert result.fallback_reason == common_pb2.FALLBACK_REASON_TIMED_OUT
    assert harness.fake.count("cancel") == 1
    await harness.assert_quiet()


async def test_submit_failure_fails_over_to_the_backup(make_swapper: MakeSwapper) -> None:
    harness = await make_swapper(FACE_SWAP_BACKUP_ENDPOINTS=BACKUP)
    harness.fake.endpoint(PRIMARY).script("run", Fault.http(503), None)
    events = await harness.swap(harness.request(await harness.put_reference()))
    assert result_of(events).method == common_pb2.FACE_SWAP_METHOD_EXTERNAL_API
    submitted = [e.submitted for e in events if e.WhichOneof("event") == "submitted"]
    assert [s.endpoint for s in submitted] == [BACKUP]
    assert harness.fake.count("run", PRIMARY) == 3
    assert harness.fake.count("run", BACKUP) == 1
    assert {e.remote_status.endpoint for e in events if e.WhichOneof("event") == "remote_status"} == {BACKUP}


async def test_rejected_key_on_the_primary_fails_over(make_swapper: MakeSwapper) -> None:
    harness = await make_swapper(FACE_SWAP_BACKUP_ENDPOINTS=BACKUP)
    harness.fake.endpoint(PRIMARY).script("run", Fault.http(403), None)
    events = await harness.swap(harness.request(await harness.put_reference()))
    assert result_of(events).method == common_pb2.FACE_SWAP_METHOD_EXTERNAL_API
    assert harness.fake.count("run", PRIMARY) == 1


async def test_ambiguous_submit_is_never_repeated_on_a_backup(make_swapper: MakeSwapper) -> None:
    harness = await make_swapper(FACE_SWAP_BACKUP_ENDPOINTS=BACKUP)
    harness.fake.endpoint(PRIMARY).script("run", Fault.reset(), None)
    result = result_of(await harness.swap(harness.request(await harness.put_reference())))
    assert result.fallback_reason == common_pb2.FALLBACK_REASON_ENDPOINT_UNAVAILABLE
    assert harness.fake.count("run", PRIMARY) == 1
    assert harness.fake.count("run", BACKUP) == 0


async def test_every_endpoint_down_lists_each_failure(make_swapper: MakeSwapper) -> None:
    harness = await make_swapper(FACE_SWAP_BACKUP_ENDPOINTS=BACKUP, FACE_SWAP_SUBMIT_ATTEMPTS="1")
    harness.fake.endpoint(PRIMARY).script("run", Fault.http(503), None)
    harness.fake.endpoint(BACKUP).script("run", Fault.http(401), None)
    result = result_of(await harness.swap(harness.request(await harness.put_reference())))
    assert result.fallback_reason == common_pb2.FALLBACK_REASON_ENDPOINT_UNAVAILABLE
    assert PRIMARY in result.fallback_message and BACKUP in result.fallback_message
    assert "the RunPod API key was rejected" in result.fallback_message


async def test_open_circuit_skips_the_primary_until_its_cooldown(make_swapper: MakeSwapper) -> None:
    harness = await make_swapper(FACE_SWAP_BACKUP_ENDPOINTS=BACKUP, FACE_SWAP_BREAKER_FAILURES="2",
                                 FACE_SWAP_BREAKER_COOLDOWN_SECONDS="60", FACE_SWAP_SUBMIT_ATTEMPTS="1")
    primary = harness.fake.endpoint(PRIMARY)
    primary.script("run", Fault.http(503), 2)
    reference = await harness.put_reference()
    for _ in range(2):
        assert result_of(await harness.swap(harness.request(reference))).method == \
            common_pb2.FACE_SWAP_METHOD_EXTERNAL_API
    assert harness.fake.count("run", PRIMARY) == 2
    # The primary works again, but its circuit is open: the next swaps go straight to the backup.
    events = await harness.swap(harness.request(reference))
    assert [e.submitted.endpoint for e in events if e.WhichOneof("event") == "submitted"] == [BACKUP]
    assert harness.fake.count("run", PRIMARY) == 2
    assert harness.fake.count("run", BACKUP) == 3


async def test_half_open_probe_closes_the_circuit(make_swapper: MakeSwapper) -> None:
    harness = await make_swapper(FACE_SWAP_BACKUP_ENDPOINTS=BACKUP, FACE_SWAP_BREAKER_FAILURES="1",
                                 FACE_SWAP_BREAKER_COOLDOWN_SECONDS="0.3", FACE_SWAP_SUBMIT_ATTEMPTS="1")
    harness.fake.endpoint(PRIMARY).script("run", Fault.http(503), 1)
    reference = await harness.put_reference()
    result_of(await harness.swap(harness.request(reference)))
    breaker = harness.app.endpoints[0].breaker
    await until(lambda: breaker.allow(), 2, "the half-open state")
    breaker._probe_started = None  # the test used the probe slot to observe the state
    events = await harness.swap(harness.request(reference))
    assert [e.submitted.endpoint for e in events if e.WhichOneof("event") == "submitted"] == [PRIMARY]
    assert breaker.consecutive_failures == 0


async def test_unsupported_long_poll_degrades_to_polling(make_swapper: MakeSwapper) -> None:
    harness = await make_swapper(FACE_SWAP_STATUS_WAIT_MS="1000")
    endpoint = harness.fake.endpoint(PRIMARY)
    endpoint.supports_wait = False
    endpoint.plan = JobPlan(run_s=0.6)
    events = await harness.swap(harness.request(await harness.put_reference()))
    assert result_of(events).method == common_pb2.FACE_SWAP_METHOD_EXTERNAL_API
    waits = [r.query.get("wait") for r in harness.fake.requests if r.route == "status"]
    asked = waits.count("1000")
    assert 2 <= asked <= 3, waits
    assert waits[:asked] == ["1000"] * asked and set(waits[asked:]) == {None}, waits
    assert harness.app.endpoints[0].wait_ms == 0


async def test_long_poll_finds_completion_with_few_requests(make_swapper: MakeSwapper) -> None:
    harness = await make_swapper(FACE_SWAP_STATUS_WAIT_MS="2000")
    harness.fake.endpoint(PRIMARY).plan = JobPlan(queue_s=0.1, run_s=1.5)
    events = await harness.swap(harness.request(await harness.put_reference()))
    assert result_of(events).method == common_pb2.FACE_SWAP_METHOD_EXTERNAL_API
    assert harness.fake.count("status") <= 3
    assert [e.remote_status.status for e in events if e.WhichOneof("event") == "remote_status"] == \
        ["IN_QUEUE", "IN_PROGRESS", "COMPLETED"]


async def test_many_swaps_end_cleanly(make_swapper: MakeSwapper) -> None:
    harness = await make_swapper()
    harness.fake.endpoint(PRIMARY).plan = JobPlan(run_s=0.3, fetch_inputs=False)
    reference = await harness.put_reference()
    harness.baseline_tasks = set(asyncio.all_tasks())
    results = await asyncio.gather(*(harness.swap(harness.request(reference, job_id=f"m-{i}"))
                                     for i in range(30)))
    assert all(kinds(events)[-1] == "result" for events in results)
    assert all(result_of(events).method == common_pb2.FACE_SWAP_METHOD_EXTERNAL_API for events in results)
    await harness.assert_quiet()
    deletes = harness.metric("facegen_swapper_storage_operation_duration_seconds_count", operation="delete_objects")
    assert 1 <= deletes < 30, "the temporary objects of swaps that end together are deleted together"


async def test_rate_limit_is_shared_by_every_job_in_flight(fake_runpod: FakeRunPod) -> None:
    """Eight jobs at once never put more than the limit's worth of requests in any window."""
    fake_runpod.endpoint(PRIMARY).plan = JobPlan(run_s=0.4, fetch_inputs=False)
    settings = RunPodSettings.from_env({"FACE_SWAP_ENDPOINT": PRIMARY, "RUNPOD_API_KEY": fake_runpod.api_key,
                                        "RUNPOD_API_BASE": fake_runpod.base_url, "FACE_SWAP_STATUS_WAIT_MS": "0",
                                        "FACE_SWAP_POLL_MIN_MS": "10", "FACE_SWAP_POLL_MAX_MS": "10"})
    window = 0.5
    limiter = EndpointRateLimiter.for_runpod(safety=1.0, limits={"run": 3, "status": 6, "cancel": 2},
                                             window=window)
    endpoint = Endpoint(PRIMARY, breaker=CircuitBreaker(), limiter=limiter, wait_ms=0)
    pool = BlockingPool("t-work", 4)
    client = RunPodClient(settings.api_base, fake_runpod.api_key)
    remote = RemoteSwapper(settings, client, [endpoint], pool)

    async def one() -> None:
        async def emit(_event: object) -> None:
            pass
        await remote.swap(SwapInputs("http://x/s", "http://x/t"), time.monotonic() + 20, emit, CallScope())

    try:
        await asyncio.gather(*(one() for _ in range(8)))
    finally:
        await client.aclose()
        pool.shutdown()
    for route, limit in (("run", 3), ("status", 6)):
        times = sorted(r.at for r in fake_runpod.requests if r.route == route)
        # A request timestamped at the fake may trail its slot a little; allow 20 ms of skew.
        assert max(sum(1 for t in times if start <= t < start + window - 0.02) for start in times) <= limit, route
    assert fake_runpod.count("run") == 8


async def test_swap_is_refused_when_too_many_are_in_flight(make_swapper: MakeSwapper) -> None:
    harness = await make_swapper(SWAPPER_MAX_IN_FLIGHT="1")
    harness.fake.endpoint(PRIMARY).plan = JobPlan(run_s=0.5)
    reference = await harness.put_reference()
    first = asyncio.ensure_future(harness.swap(harness.request(reference)))
    await until(lambda: harness.metric("facegen_swapper_swaps_in_flight") == 1, 5, "the first swap")
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await harness.swap(harness.request(reference))
    assert caught.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert result_of(await first).method == common_pb2.FACE_SWAP_METHOD_EXTERNAL_API
