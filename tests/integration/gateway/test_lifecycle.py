"""Cancelling, re-attaching, deadlines, capacity and unreachable upstreams."""

from __future__ import annotations

import asyncio
from collections.abc import Callable

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from facegen.v1 import common_pb2, gateway_pb2
from tests.fakes.grpc_upstreams import FakeUpstreams
from tests.integration.gateway.conftest import Gateway, GatewayFactory
from tests.integration.gateway.support import check_stream, collect, job_request

pytestmark = pytest.mark.integration


async def next_event(stream: grpc.aio.UnaryStreamCall,
                     predicate: Callable[[gateway_pb2.JobEvent], bool] | None = None) -> gateway_pb2.JobEvent:
    """Reads events until one satisfies ``predicate`` (any event when None)."""
    while True:
        event = await asyncio.wait_for(stream.read(), 5)
        assert isinstance(event, gateway_pb2.JobEvent), "the stream ended early"
        if predicate is None or predicate(event):
            return event


async def test_cancelling_the_run_stream_cancels_the_generator_call(
        gateway: Gateway, upstreams: FakeUpstreams) -> None:
    upstreams.generator.script.gate = asyncio.Event()  # generation never finishes by itself
    stream = gateway.stub.Run(job_request())
    first = await next_event(stream)
    await upstreams.generator.wait_for(lambda g: g.active == 1)
    stream.cancel()
    await upstreams.generator.wait_for(lambda g: first.job_id in g.cancelled)
    job = await gateway.stub.Get(gateway_pb2.GetRequest(job_id=first.job_id))
    assert job.state == gateway_pb2.JOB_STATE_CANCELLED
    assert job.result.message == "cancelled: the Run stream was closed by the client"
    events = await collect(gateway.stub.Watch(gateway_pb2.WatchRequest(job_id=first.job_id)))
    assert check_stream(events).code == "CANCELLED"


async def test_cancelling_the_run_stream_while_swapping_cancels_the_swaps(
        gateway: Gateway, upstreams: FakeUpstreams) -> None:
    upstreams.swapper.script.gate = asyncio.Event()
    stream = gateway.stub.Run(job_request(num_images=2))
    first = await next_event(stream)
    await upstreams.swapper.wait_for(lambda s: s.active == 2)
    stream.cancel()
    await upstreams.swapper.wait_for(lambda s: len(s.cancelled_swaps) == 2)
    assert sorted(upstreams.swapper.cancelled_swaps) == [(first.job_id, 0), (first.job_id, 1)]


async def test_a_cancelled_job_cancels_each_resumable_swap_it_called_stored_or_not(
        gateway: Gateway, upstreams: FakeUpstreams, store_kind: str) -> None:
    # A resumable swap outlives its call (a gateway that dies must not end it), so a job that is
    # cancelled while a Swap is still on its way, before the swapper stored anything, must say so
    # with CancelSwap, or the swap would go on to pay for a RunPod job nobody wants.
    upstreams.swapper.script.gate = asyncio.Event()  # each Swap waits before its "stored" event
    stream = gateway.stub.Run(job_request(num_images=2))
    first = await next_event(stream)
    await upstreams.swapper.wait_for(lambda s: s.active == 2)
    await gateway.stub.Cancel(gateway_pb2.CancelRequest(job_id=first.job_id))
    await upstreams.swapper.wait_for(lambda s: len(s.cancelled_swaps) == 2)
    expected = [(first.job_id, 0), (first.job_id, 1)] if store_kind == "redis" else []
    await upstreams.swapper.wait_for(lambda s: len(s.cancel_swap_calls) == len(expected))
    assert sorted(upstreams.swapper.cancel_swap_calls) == expected, "only resumable swaps outlive their call"


async def test_the_cancel_rpc_stops_the_job_and_its_upstream_calls(
        gateway: Gateway, upstreams: FakeUpstreams, store_kind: str) -> None:
    upstreams.generator.script.gate = asyncio.Event()
    # With a shared store the reference is stored before the job is queued: only one process overlaps them.
    overlapped = store_kind == "memory"
    if overlapped:
        upstreams.swapper.script.put_gate = asyncio.Event()
    submitted = await gateway.stub.Submit(job_request())
    await upstreams.generator.wait_for(lambda g: g.active == 1)
    await upstreams.swapper.wait_for(lambda s: len(s.puts) == 1)
    response = await gateway.stub.Cancel(gateway_pb2.CancelRequest(job_id=submitted.job_id))
    assert response.state == gateway_pb2.JOB_STATE_CANCELLED
    await upstreams.generator.wait_for(lambda g: submitted.job_id in g.cancelled)
    if overlapped:
        await upstreams.swapper.wait_for(lambda s: submitted.job_id in s.cancelled_puts)
    result = check_stream(await collect(gateway.stub.Watch(gateway_pb2.WatchRequest(job_id=submitted.job_id))))
    assert (result.state, result.code, result.message) == (
        gateway_pb2.JOB_STATE_CANCELLED, "CANCELLED", "cancelled by a Cancel request")
    assert [(f.index, f.code) for f in result.failures] == [(0, "CANCELLED")]
    again = await gateway.stub.Cancel(gateway_pb2.CancelRequest(job_id=submitted.job_id))
    assert again.state == gateway_pb2.JOB_STATE_CANCELLED


async def test_cancelling_a_finished_job_keeps_its_state(gateway: Gateway) -> None:
    events = await collect(gateway.stub.Run(job_request()))
    response = await gateway.stub.Cancel(gateway_pb2.CancelRequest(job_id=events[0].job_id))
    assert response.state == gateway_pb2.JOB_STATE_COMPLETED


async def test_watch_replays_what_was_missed_after_a_disconnect(
        gateway: Gateway, upstreams: FakeUpstreams) -> None:
    gate = asyncio.Event()
    upstreams.generator.script.gate = gate
    upstreams.generator.script.queue_positions = (2, 1, 0)
    submitted = await gateway.stub.Submit(job_request(num_images=2))
    watch = gateway.stub.Watch(gateway_pb2.WatchRequest(job_id=submitted.job_id))
    seen = [await next_event(watch, lambda ev: ev.queue_position == 1 and ev.stage == 2)]
    watch.cancel()  # the client goes away; the job must carry on
    gate.set()
    await upstreams.swapper.wait_for(lambda s: len(s.swaps) == 2)
    rest = await collect(gateway.stub.Watch(
        gateway_pb2.WatchRequest(job_id=submitted.job_id, after_seq=seen[-1].seq)))
    result = check_stream(rest, first_seq=seen[-1].seq + 1)
    assert result.state == gateway_pb2.JOB_STATE_COMPLETED
    assert not upstreams.generator.cancelled
    everything = await collect(gateway.stub.Watch(gateway_pb2.WatchRequest(job_id=submitted.job_id)))
    check_stream(everything)
    assert everything[-len(rest):] == rest
    assert everything[seen[-1].seq - 1] == seen[-1]


async def test_an_upstream_deadline_fails_the_job_and_cancels_the_call(
        start_gateway: GatewayFactory, upstreams: FakeUpstreams) -> None:
    gateway = await start_gateway(generate_timeout_seconds=0.3)
    upstreams.generator.script.gate = asyncio.Event()
    events = await asyncio.wait_for(collect(gateway.stub.Run(job_request())), 10)
    result = check_stream(events)
    assert (result.state, result.code) == (gateway_pb2.JOB_STATE_FAILED, "DEADLINE_EXCEEDED")
    assert result.message == "the generator did not finish within 0.3 s (GATEWAY_GENERATE_TIMEOUT_SECONDS)"
    await upstreams.generator.wait_for(lambda g: events[0].job_id in g.cancelled)


async def test_a_swap_deadline_fails_that_image_only(start_gateway: GatewayFactory,
                                                     upstreams: FakeUpstreams) -> None:
    gateway = await start_gateway(swap_timeout_seconds=0.4)
    upstreams.swapper.script.delay_by_index = {1: 5.0}
    events = await asyncio.wait_for(collect(gateway.stub.Run(job_request(num_images=2))), 10)
    result = check_stream(events)
    assert (result.state, result.code) == (gateway_pb2.JOB_STATE_FAILED, "DEADLINE_EXCEEDED")
    assert [img.index for img in result.images] == [0]
    assert [(f.index, f.code) for f in result.failures] == [(1, "DEADLINE_EXCEEDED")]
    assert "GATEWAY_SWAP_TIMEOUT_SECONDS" in result.failures[0].message
    assert {call.deadline_ms for call in upstreams.swapper.swaps} == {300}
    await upstreams.swapper.wait_for(lambda s: (events[0].job_id, 1) in s.cancelled_swaps)


async def test_past_the_running_and_queued_limits_jobs_are_refused(
        start_gateway: GatewayFactory, upstreams: FakeUpstreams) -> None:
    gateway = await start_gateway(max_running_jobs=1, max_queued_jobs=1)
    gate = asyncio.Event()
    upstreams.generator.script.gate = gate
    running = await gateway.stub.Submit(job_request())
    await upstreams.generator.wait_for(lambda g: g.active == 1)
    queued = await gateway.stub.Submit(job_request())
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await gateway.stub.Submit(job_request())
    assert caught.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert "at capacity" in (caught.value.details() or "")
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await collect(gateway.stub.Run(job_request()))
    assert caught.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    waiting = await gateway.stub.Get(gateway_pb2.GetRequest(job_id=queued.job_id))
    assert (waiting.state, waiting.stage) == (gateway_pb2.JOB_STATE_QUEUED, gateway_pb2.STAGE_QUEUED)
    assert upstreams.generator.calls == 1
    gate.set()
    firsts = []
    for job_id in (running.job_id, queued.job_id):
        events = await collect(gateway.stub.Watch(gateway_pb2.WatchRequest(job_id=job_id)))
        assert check_stream(events).state == gateway_pb2.JOB_STATE_COMPLETED
        firsts.append(events[0].message)
    assert firsts == ["accepted", "waiting for a free slot (0 jobs ahead)"]
    assert upstreams.generator.calls == 2
    # Capacity is free again.
    assert (await gateway.stub.Submit(job_request())).created


async def test_the_swap_concurrency_limit_holds_per_job(start_gateway: GatewayFactory,
                                                        upstreams: FakeUpstreams) -> None:
    gateway = await start_gateway(swap_concurrency=2)
    upstreams.swapper.script.delay = 0.05
    result = check_stream(await collect(gateway.stub.Run(job_request(num_images=4))))
    assert result.state == gateway_pb2.JOB_STATE_COMPLETED
    assert upstreams.swapper.max_active == 2


async def test_with_upstreams_down_the_gateway_serves_and_jobs_fail_unavailable(
        start_gateway: GatewayFactory, upstreams: FakeUpstreams, store_kind: str) -> None:
    await upstreams.stop()
    gateway = await start_gateway(connect_timeout_seconds=0.3)
    health = health_pb2_grpc.HealthStub(gateway.channel)
    for service in ("", "facegen.v1.GatewayService"):
        reply = await health.Check(health_pb2.HealthCheckRequest(service=service))
        assert reply.status == health_pb2.HealthCheckResponse.SERVING
    if store_kind == "redis":
        # The reference must be stored before the job is queued: the submit itself fails.
        with pytest.raises(grpc.aio.AioRpcError) as refused:
            await gateway.stub.Submit(job_request())
        assert refused.value.code() == grpc.StatusCode.UNAVAILABLE
        assert "the swapper cannot be reached (no connection within 0.3 s)" in (refused.value.details() or "")
    else:
        result = check_stream(await asyncio.wait_for(collect(gateway.stub.Run(job_request())), 10))
        assert (result.state, result.code) == (gateway_pb2.JOB_STATE_FAILED, "UNAVAILABLE")
        assert "cannot be reached (no connection within 0.3 s)" in result.message
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await gateway.stub.ListModels(common_pb2.ListModelsRequest())
    assert caught.value.code() == grpc.StatusCode.UNAVAILABLE
    assert "the generator cannot be reached" in (caught.value.details() or "")


async def test_stopping_the_gateway_stops_its_jobs_upstream_and_cancels_or_hands_them_over(
        start_gateway: GatewayFactory, upstreams: FakeUpstreams, store_kind: str) -> None:
    gateway = await start_gateway()
    upstreams.generator.script.gate = asyncio.Event()
    submitted = await gateway.stub.Submit(job_request())
    await upstreams.generator.wait_for(lambda g: g.active == 1)
    await gateway.app.stop()
    await upstreams.generator.wait_for(lambda g: submitted.job_id in g.cancelled)
    if store_kind == "redis":
        # Handed back to the queue, for another replica to resume.
        successor = await start_gateway()
        upstreams.generator.script.gate.set()
        events = await collect(successor.stub.Watch(gateway_pb2.WatchRequest(job_id=submitted.job_id)))
        assert check_stream(events).state == gateway_pb2.JOB_STATE_COMPLETED
        assert [ev.resumed for ev in events].count(True) == 1
    else:
        job = await gateway.app.manager.get(submitted.job_id)
        assert job.result.message.startswith("the gateway is shutting down")
