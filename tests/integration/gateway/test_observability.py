"""The gateway's metrics, log lines and traces for real jobs, with both job stores (Redis resumes too)."""

from __future__ import annotations

import asyncio
import logging

import grpc
import pytest

from facegen.v1 import common_pb2, gateway_pb2
from services.common.metrics import value
from services.common.names import stage_name
from services.gateway.upstreams import GENERATE, SWAP
from tests.fakes.grpc_upstreams import FakeUpstreams, SwapScript
from tests.integration.gateway.conftest import Gateway, GatewayFactory
from tests.integration.gateway.support import check_stream, collect, job_request
from tests.spans import hex_id, named, parent_id
from tests.waiting import until

pytestmark = pytest.mark.integration

TRACE_ID = "4bf92f3577b34da6a3ce929d0e0e4736"
CALLER_SPAN = "00f067aa0ba902b7"
TRACEPARENT = (("traceparent", f"00-{TRACE_ID}-{CALLER_SPAN}-01"),)
SUBMIT = "facegen.v1.GatewayService/Submit"


def metric(gateway: Gateway, name: str, **labels: str) -> float:
    return value(gateway.app.metrics.registry, name, labels)


def client_calls(gateway: Gateway, rpc: str, code: str) -> float:
    service, method = rpc.lstrip("/").rsplit("/", 1)
    kind = "server_stream" if method in ("Generate", "Swap") else "unary"
    return metric(gateway, "grpc_client_handled_total", grpc_type=kind, grpc_service=service, grpc_method=method,
                  grpc_code=code)


async def test_a_finished_job_moves_the_job_image_and_call_counters(gateway: Gateway,
                                                                    upstreams: FakeUpstreams) -> None:
    upstreams.swapper.script = SwapScript(fallback={1: (common_pb2.FALLBACK_REASON_NO_FACE_FOUND, "no face")})
    events = await collect(gateway.stub.Run(job_request(num_images=2)))
    assert check_stream(events).state == gateway_pb2.JOB_STATE_COMPLETED

    assert metric(gateway, "facegen_gateway_jobs_submitted_total", mode="generate") == 1
    assert metric(gateway, "facegen_gateway_jobs_finished_total", mode="generate", state="completed", code="OK") == 1
    assert metric(gateway, "facegen_gateway_job_duration_seconds_count", mode="generate", state="completed") == 1
    assert metric(gateway, "facegen_gateway_stage_duration_seconds_count", stage="generating") == 1
    assert metric(gateway, "facegen_gateway_images_total", outcome="swapped") == 1
    assert metric(gateway, "facegen_gateway_images_total", outcome="fallback") == 1
    assert metric(gateway, "facegen_gateway_fallbacks_total", reason="no_face_found") == 1
    assert metric(gateway, "facegen_gateway_events_delivered_total") == len(events)
    assert metric(gateway, "facegen_gateway_watch_streams") == 0
    assert metric(gateway, "facegen_gateway_running_jobs") == 0
    assert client_calls(gateway, GENERATE, "OK") == 1 and client_calls(gateway, SWAP, "OK") == 2
    assert metric(gateway, "grpc_server_handled_total", grpc_type="server_stream",
                  grpc_service="facegen.v1.GatewayService", grpc_method="Run", grpc_code="OK") == 1


async def test_running_jobs_queue_depth_and_open_streams_are_gauged(start_gateway: GatewayFactory,
                                                                     upstreams: FakeUpstreams) -> None:
    gateway = await start_gateway(max_running_jobs=1, max_queued_jobs=4)
    upstreams.generator.script.gate = gate = asyncio.Event()
    first = await gateway.stub.Submit(job_request())
    second = await gateway.stub.Submit(job_request())
    watch = gateway.stub.Watch(gateway_pb2.WatchRequest(job_id=first.job_id))
    await watch.read()
    await until(lambda: metric(gateway, "facegen_gateway_running_jobs") == 1, 5, "one running job")
    await until(lambda: metric(gateway, "facegen_gateway_queue_depth") == 1, 5, "one queued job")
    assert metric(gateway, "facegen_gateway_watch_streams") == 1
    gate.set()
    for job_id in (first.job_id, second.job_id):
        await collect(gateway.stub.Watch(gateway_pb2.WatchRequest(job_id=job_id)))
    await until(lambda: metric(gateway, "facegen_gateway_queue_depth") == 0, 5, "an empty queue")
    watch.cancel()
    await until(lambda: metric(gateway, "facegen_gateway_watch_streams") == 0, 5, "no open stream")
    assert metric(gateway, "facegen_gateway_jobs_finished_total", mode="generate", state="completed", code="OK") == 2


async def test_refused_callers_are_counted_by_reason(start_gateway: GatewayFactory) -> None:
    gateway = await start_gateway(auth_token="a-long-secret-token-value-123")
    for metadata in ((), (("authorization", "Basic d3Jvbmc="),), (("authorization", "Bearer wrong"),)):
        with pytest.raises(grpc.aio.AioRpcError) as refused:
            await gateway.stub.Get(gateway_pb2.GetRequest(job_id="x"), metadata=metadata)
        assert refused.value.code() == grpc.StatusCode.UNAUTHENTICATED
    assert metric(gateway, "facegen_gateway_auth_failures_total", reason="missing") == 1
    assert metric(gateway, "facegen_gateway_auth_failures_total", reason="malformed") == 1
    assert metric(gateway, "facegen_gateway_auth_failures_total", reason="unknown") == 1


async def test_at_info_a_job_logs_its_life_and_each_event_only_at_debug(
        gateway: Gateway, caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.INFO):
        events = await collect(gateway.stub.Run(job_request(num_images=2)))
    job_id = events[0].job_id
    info = [r for r in caplog.records if r.levelno >= logging.INFO and getattr(r, "facegen_event", "")
            .startswith("job.")]
    assert [r.facegen_event for r in info] == ["job.submitted", "job.started", "job.finished"]
    finished = info[-1].facegen_fields
    assert (finished["state"], finished["images"], finished["swapped"]) == ("completed", 2, 2)
    caplog.clear()
    with caplog.at_level(logging.DEBUG):
        events = await collect(gateway.stub.Run(job_request(num_images=2)))
    logged = [r for r in caplog.records if getattr(r, "facegen_event", "") == "job.event"]
    # Every event but the first (written with the job at submit) is one DEBUG line.
    assert len(logged) == len(events) - 1 and all(r.levelno == logging.DEBUG for r in logged)
    assert job_id != events[0].job_id


async def test_a_job_is_one_trace_from_the_call_that_submitted_it(gateway: Gateway, upstreams: FakeUpstreams,
                                                                   spans) -> None:
    submitted = await gateway.stub.Submit(job_request(), metadata=TRACEPARENT)
    events = await collect(gateway.stub.Watch(gateway_pb2.WatchRequest(job_id=submitted.job_id)))
    result = check_stream(events)
    job = await gateway.stub.Get(gateway_pb2.GetRequest(job_id=submitted.job_id))
    assert result.trace_id == job.trace_id == TRACE_ID, "Get and the terminal event name the job's trace"

    await until(lambda: named(spans, "facegen.job"), 5, "the job's span")
    (submit,) = named(spans, SUBMIT)
    (run,) = named(spans, "facegen.job")
    assert {hex_id(span)[0] for span in (submit, run)} == {TRACE_ID}
    assert parent_id(submit) == CALLER_SPAN and parent_id(run) == hex_id(submit)[1]
    assert not named(spans, GENERATE.lstrip("/")) and not named(spans, SWAP.lstrip("/")), \
        "the callees' server spans are the calls: no client spans"
    assert run.attributes["facegen.job_id"] == submitted.job_id and run.attributes["facegen.resumed"] is False
    # The job's events are events of its span, not spans; denoising steps, queue positions and remote
    # statuses are left to the generator's and swapper's spans.
    milestones = [event for event in events if not (event.HasField("denoise") or event.HasField("remote")
                                                    or event.message.startswith("waiting for the generator"))]
    assert [(e.name, e.attributes["seq"], e.attributes["message"]) for e in run.events] == [
        (f"job.{stage_name(event.stage)}", event.seq, event.message) for event in milestones[-len(run.events):]]
    assert run.events[-1].name == "job.terminal" and len(run.events) < len(events) - 2
    # The generator is called with the job span's context: its own spans continue the trace.
    assert upstreams.generator.traceparents == [f"00-{TRACE_ID}-{hex_id(run)[1]}-01"]
    # Calls about a job, in traces of their own, name it.
    await gateway.stub.Cancel(gateway_pb2.CancelRequest(job_id=submitted.job_id))
    await until(lambda: named(spans, "facegen.v1.GatewayService/Cancel"), 5, "the Cancel span")
    for rpc in ("Watch", "Get", "Cancel"):
        (call,) = named(spans, f"facegen.v1.GatewayService/{rpc}")
        assert call.attributes["facegen.job_id"] == submitted.job_id, rpc


async def test_without_tracing_no_trace_id_is_made_up(gateway: Gateway, upstreams: FakeUpstreams) -> None:
    events = await collect(gateway.stub.Run(job_request(), metadata=TRACEPARENT))
    assert check_stream(events).trace_id == ""
    assert upstreams.generator.traceparents == [""], "nothing is propagated when tracing is off"


@pytest.mark.parametrize("store_kind", ["redis"])
async def test_a_resumed_job_continues_its_trace_on_the_next_gateway(start_gateway: GatewayFactory,
                                                                     upstreams: FakeUpstreams, spans) -> None:
    first = await start_gateway(drain_seconds=0)
    upstreams.generator.script.gate = gate = asyncio.Event()
    submitted = await first.stub.Submit(job_request(), metadata=TRACEPARENT)
    await upstreams.generator.wait_for(lambda g: g.active == 1)
    await first.app.drain()  # hands the running job back to Redis
    second = await start_gateway()
    gate.set()
    events = await collect(second.stub.Watch(gateway_pb2.WatchRequest(job_id=submitted.job_id)))
    assert any(event.resumed for event in events)
    assert check_stream(events).trace_id == TRACE_ID

    await until(lambda: len(named(spans, "facegen.job")) == 2, 5, "both runs' spans")
    (submit,) = named(spans, SUBMIT)
    released, resumed = named(spans, "facegen.job")
    assert [span.attributes["facegen.resumed"] for span in (released, resumed)] == [False, True]
    for span in (released, resumed):
        assert hex_id(span)[0] == TRACE_ID and parent_id(span) == hex_id(submit)[1]
    assert resumed.attributes["facegen.gateway"] == second.app.settings.instance
    assert value(second.app.metrics.registry, "facegen_gateway_jobs_resumed_total") == 1
    assert value(first.app.metrics.registry, "facegen_gateway_jobs_finished_total",
                 {"mode": "generate", "state": "completed", "code": "OK"}) == 0, "counted once, where it ended"

