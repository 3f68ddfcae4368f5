"""The client rides out a lost gateway: every event once, in order, and the final result.

Gateways are real processes (``python -m services.gateway``) killed, restarted
and drained under the client, in front of the fake generator and swapper.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import time

import grpc
import pytest

from facegen.v1 import gateway_pb2
from services.client import AsyncFacegenClient, FacegenClient, GatewayError, JobLostError, RetryPolicy
from tests.fakes.grpc_upstreams import FakeUpstreams
from tests.integration.client.conftest import StartGateways, restart, target_of
from tests.integration.client.tcp_proxy import TcpProxy
from tests.integration.gateway.support import check_stream, job_request
from tests.redis_server import RedisServer

pytestmark = pytest.mark.integration

# Quick retries for tests; the outage budget still covers a lease expiry and a process start.
POLICY = RetryPolicy(initial_backoff=0.05, max_backoff=0.5, give_up_after=30.0)
PICK_FIRST = ("grpc.service_config", json.dumps({"loadBalancingConfig": [{"pick_first": {}}]}))


def holder(redis: RedisServer, job_id: str) -> str:
    """The replica that holds the job's lease now."""
    with redis.client() as client:
        owner = client.hget(f"facegen:job:{{{job_id}}}", "owner")
    return (owner or b"").decode()


def slow_generation(upstreams: FakeUpstreams, steps: int = 12, step_delay: float = 0.25) -> None:
    """Generation long enough to break the stream in the middle of it."""
    upstreams.generator.script.steps, upstreams.generator.script.step_delay = steps, step_delay


def jobs_made(upstreams: FakeUpstreams) -> set[str]:
    """The ids of the jobs that reached the generator."""
    return {request.job_id for request in upstreams.generator.requests}


async def test_a_run_goes_on_when_its_only_gateway_is_killed_and_started_again(
        gateways: StartGateways, upstreams: FakeUpstreams) -> None:
    slow_generation(upstreams)
    (gateway,) = await gateways(1)
    events = []
    async with AsyncFacegenClient(gateway.address, policy=POLICY) as client:
        stream = client.run(job_request(seed=7))
        async for event in stream:
            events.append(event)
            if event.denoise.step == 2 and stream.resumes == 0:
                await restart(gateway)
    result = check_stream(events)
    assert result.state == gateway_pb2.JOB_STATE_COMPLETED
    assert stream.resumes >= 1
    assert sum(event.resumed for event in events) == 1, "the restarted gateway resumed the job once"
    assert jobs_made(upstreams) == {stream.job_id}, "one job, generated again after the restart"


async def test_the_sync_client_moves_to_the_second_gateway_when_its_gateway_is_killed(
        gateways: StartGateways, upstreams: FakeUpstreams, redis_server: RedisServer) -> None:
    slow_generation(upstreams)
    first, second = await gateways(2)
    loop = asyncio.get_running_loop()
    owners = []

    def follow() -> tuple[list[gateway_pb2.JobEvent], str | None, int]:
        # pick_first: every call goes to the first gateway while it is up (round_robin, the default,
        # might watch through the other one, and then the kill would not break the stream).
        with FacegenClient(target_of([first, second]), policy=POLICY, options=[PICK_FIRST]) as client:
            stream = client.run(job_request(seed=7, num_images=2))
            seen = []
            for event in stream:
                seen.append(event)
                if event.denoise.step == 2 and not owners:
                    owners.append(holder(redis_server, str(stream.job_id)))
                    asyncio.run_coroutine_threadsafe(first.kill(), loop).result(30)
            return seen, stream.job_id, stream.resumes

    events, job_id, resumes = await asyncio.to_thread(follow)
    result = check_stream(events)
    assert result.state == gateway_pb2.JOB_STATE_COMPLETED
    assert [(image.index, image.seed) for image in result.images] == [(0, 7), (1, 8)]
    assert resumes >= 1, "the stream broke with its gateway and went on through the second"
    if owners == [first.name]:  # the usual case: the gateway that took the submit ran the job
        (resumed,) = [event for event in events if event.resumed]
        assert f"resumed by gateway {second.name}" in resumed.message
    assert jobs_made(upstreams) == {job_id}


async def test_a_draining_gateway_hands_the_stream_over_to_another(
        gateways: StartGateways, upstreams: FakeUpstreams, redis_server: RedisServer) -> None:
    upstreams.generator.script.gate = gate = asyncio.Event()
    first, second = await gateways(2, GATEWAY_DRAIN_SECONDS="0.5")
    # Only the first may claim the job: the second is paused until the first holds it.
    assert second.process is not None
    os.kill(second.process.pid, signal.SIGSTOP)
    events = []
    async with AsyncFacegenClient(target_of([first, second]), policy=POLICY, options=[PICK_FIRST]) as client:
        stream = client.run(job_request())
        async for event in stream:
            events.append(event)
            if event.stage == gateway_pb2.STAGE_GENERATING and not gate.is_set():
                assert holder(redis_server, str(stream.job_id)) == first.name
                os.kill(second.process.pid, signal.SIGCONT)
                first.terminate()
                assert await first.wait(30) == 0
                await upstreams.generator.wait_for(lambda g: g.calls == 2, within=10)
                gate.set()
    result = check_stream(events)
    assert result.state == gateway_pb2.JOB_STATE_COMPLETED
    assert stream.resumes >= 1, "the drained gateway ended the stream with UNAVAILABLE"
    assert sum(event.resumed for event in events) == 1
    assert jobs_made(upstreams) == {stream.job_id}


async def test_a_connection_reset_mid_stream_is_resumed_and_the_job_goes_on(
        gateways: StartGateways, upstreams: FakeUpstreams) -> None:
    slow_generation(upstreams, steps=8, step_delay=0.1)
    (gateway,) = await gateways(1, store="memory")
    proxy = await TcpProxy(gateway.address).start()
    events = []
    try:
        async with AsyncFacegenClient(proxy.address, policy=POLICY) as client:
            stream = client.run(job_request())
            async for event in stream:
                events.append(event)
                if event.denoise.step == 3 and stream.resumes == 0:
                    proxy.reset()
    finally:
        await proxy.close()
    result = check_stream(events)
    assert result.state == gateway_pb2.JOB_STATE_COMPLETED
    assert stream.resumes >= 1 and proxy.connections >= 2
    assert not upstreams.generator.cancelled, "a connection lost on the way is no cancel"
    assert [event.denoise.step for event in events if event.HasField("denoise")] == list(range(1, 9))


@pytest.mark.parametrize("client_kind", ["sync", "asyncio"])
async def test_a_submit_whose_answer_was_lost_is_repeated_without_making_a_second_job(
        gateways: StartGateways, upstreams: FakeUpstreams, client_kind: str) -> None:
    (gateway,) = await gateways(1, store="memory")
    proxy = await TcpProxy(gateway.address).start()

    async def lose_the_answer() -> None:
        await upstreams.generator.wait_for(lambda g: g.calls == 1)
        proxy.reset()

    def follow_sync() -> tuple[list[gateway_pb2.JobEvent], str | None]:
        with FacegenClient(proxy.address, policy=POLICY) as client:
            client.list_models()  # connected through the proxy before the replies are held
            proxy.hold_replies()
            stream = client.run(job_request())
            return list(stream), stream.job_id

    async def follow_async() -> tuple[list[gateway_pb2.JobEvent], str | None]:
        async with AsyncFacegenClient(proxy.address, policy=POLICY) as client:
            await client.list_models()
            proxy.hold_replies()
            stream = client.run(job_request())
            return [event async for event in stream], stream.job_id

    try:
        breaking = asyncio.ensure_future(lose_the_answer())
        events, job_id = await (asyncio.to_thread(follow_sync) if client_kind == "sync" else follow_async())
        await breaking
    finally:
        await proxy.close()
    assert check_stream(events).state == gateway_pb2.JOB_STATE_COMPLETED
    assert jobs_made(upstreams) == {job_id}, "the repeated submit found the job its key had made"
    assert upstreams.generator.calls == 1


async def test_cancelling_the_task_that_reads_a_run_cancels_the_job(
        gateways: StartGateways, upstreams: FakeUpstreams) -> None:
    upstreams.generator.script.gate = asyncio.Event()
    (gateway,) = await gateways(1, store="memory")
    async with AsyncFacegenClient(gateway.address, policy=POLICY) as client:
        stream = client.run(job_request())

        async def read() -> None:
            async for _event in stream:
                pass

        reader = asyncio.ensure_future(read())
        await upstreams.generator.wait_for(lambda g: g.active == 1)
        reader.cancel()
        with pytest.raises(asyncio.CancelledError):
            await reader
        await upstreams.generator.wait_for(lambda g: stream.job_id in g.cancelled)
        job = await client.get(str(stream.job_id))
    assert job.state == gateway_pb2.JOB_STATE_CANCELLED
    assert "Cancel request" in job.result.message


async def test_a_job_lost_with_the_in_memory_store_is_reported_and_not_submitted_again(
        gateways: StartGateways, upstreams: FakeUpstreams) -> None:
    slow_generation(upstreams)
    (gateway,) = await gateways(1, store="memory")
    async with AsyncFacegenClient(gateway.address, policy=POLICY) as client:
        stream = client.run(job_request())
        with pytest.raises(JobLostError) as lost:
            async for event in stream:
                if event.denoise.step == 1:
                    await restart(gateway)
    assert lost.value.code == grpc.StatusCode.NOT_FOUND
    assert (lost.value.job_id, lost.value.last_seq) == (stream.job_id, stream.last_seq)
    assert jobs_made(upstreams) == {stream.job_id}, "the client did not run the job again"


async def test_re_attaching_gives_up_after_the_outage_budget_with_where_it_stopped(
        gateways: StartGateways, upstreams: FakeUpstreams) -> None:
    slow_generation(upstreams)
    (gateway,) = await gateways(1)
    policy = RetryPolicy(initial_backoff=0.05, max_backoff=0.2, give_up_after=1.0)
    async with AsyncFacegenClient(gateway.address, policy=policy) as client:
        stream = client.watch((await client.submit(job_request())).job_id)
        with pytest.raises(GatewayError) as gave_up:
            async for event in stream:
                if event.denoise.step == 1:
                    await gateway.kill()
                    killed = time.monotonic()
        waited = time.monotonic() - killed
    assert gave_up.value.code == grpc.StatusCode.UNAVAILABLE
    assert "gave up after" in gave_up.value.details
    assert gave_up.value.last_seq == stream.last_seq > 0
    assert 1.0 <= waited < 1.0 + 2.0, f"gave up {waited:.1f} s after the gateway died"


async def test_a_refused_request_is_raised_at_once_and_makes_no_job(
        gateways: StartGateways, upstreams: FakeUpstreams) -> None:
    (gateway,) = await gateways(1, store="memory")
    async with AsyncFacegenClient(gateway.address, policy=POLICY) as client:
        started = time.monotonic()
        with pytest.raises(GatewayError) as refused:
            await client.run(job_request(prompt="  ")).wait()
    assert refused.value.code == grpc.StatusCode.INVALID_ARGUMENT
    assert "prompt" in refused.value.details
    assert time.monotonic() - started < 2.0
    assert upstreams.generator.calls == 0
