"""The swapper's metrics (RunPod requests, remote jobs, breakers, rate limits, storage, references) and its
spans (the Swap call, its S3 and RunPod requests), through a real server, moto's S3 and the fake RunPod."""

from __future__ import annotations

import pytest

from facegen.v1 import common_pb2, swapper_pb2
from services.stack.runpod_emulator.faults import Fault
from services.stack.runpod_emulator.jobs import JobPlan
from tests.integration.swapper.harness import PRIMARY, MakeSwapper, result_of
from tests.spans import hex_id, named, parent_id
from tests.waiting import until

pytestmark = pytest.mark.integration

TRACE_ID = "5bd66ef5095369c7b0d1f8f4bd33716a"
CALLER_SPAN = "c532cb4098ac3dd2"


async def test_a_swap_moves_the_runpod_storage_and_reference_metrics(make_swapper: MakeSwapper) -> None:
    harness = await make_swapper()
    harness.fake.endpoint(PRIMARY).plan = JobPlan(queue_s=0.05, run_s=0.1)
    reference = await harness.put_reference()
    assert await harness.put_reference() == reference
    result = result_of(await harness.swap(harness.request(reference)))
    assert result.method == common_pb2.FACE_SWAP_METHOD_EXTERNAL_API
    await harness.assert_quiet()

    metric = harness.metric
    assert metric("facegen_swapper_runpod_requests_total", endpoint=PRIMARY, route="run", status="200") == 1
    assert metric("facegen_swapper_runpod_requests_total", endpoint=PRIMARY, route="status", status="200") >= 1
    assert metric("facegen_swapper_runpod_request_duration_seconds_count", endpoint=PRIMARY, route="run") == 1
    assert metric("facegen_swapper_remote_jobs_total", endpoint=PRIMARY, status="COMPLETED") == 1
    assert metric("facegen_swapper_remote_queue_seconds_count", endpoint=PRIMARY) == 1
    assert 0.05 <= metric("facegen_swapper_remote_execution_seconds_sum", endpoint=PRIMARY) < 5
    assert metric("facegen_swapper_rate_limit_wait_seconds_count", endpoint=PRIMARY, route="run") == 1
    assert metric("facegen_swapper_circuit_breaker_state", endpoint=PRIMARY) == 0
    assert metric("facegen_swapper_reference_uploads_total") == 1
    assert metric("facegen_swapper_reference_cache_hits_total") == 1
    # The reference, the swap's input and its result; the input deleted once it is no longer needed.
    assert metric("facegen_swapper_storage_operation_duration_seconds_count", operation="put_object") == 3
    assert metric("facegen_swapper_storage_operation_duration_seconds_count", operation="delete_objects") == 1
    assert metric("facegen_swapper_storage_errors_total", operation="put_object") == 0
    assert metric("grpc_server_handled_total", grpc_type="server_stream", grpc_service="facegen.v1.SwapperService",
                  grpc_method="Swap", grpc_code="OK") == 1


async def test_failing_submits_open_the_breaker_and_are_counted_by_status(make_swapper: MakeSwapper) -> None:
    harness = await make_swapper(FACE_SWAP_BREAKER_FAILURES="2", FACE_SWAP_BREAKER_COOLDOWN_SECONDS="60",
                                 FACE_SWAP_BACKUP_ENDPOINTS=None)
    harness.fake.endpoint(PRIMARY).script("run", Fault.http(503), None)
    reference = await harness.put_reference()
    result = result_of(await harness.swap(harness.request(reference)))
    assert result.fallback_reason == common_pb2.FALLBACK_REASON_ENDPOINT_UNAVAILABLE
    assert harness.metric("facegen_swapper_runpod_requests_total", endpoint=PRIMARY, route="run", status="503") >= 2
    assert harness.metric("facegen_swapper_circuit_breaker_state", endpoint=PRIMARY) == 2
    assert harness.metric("facegen_swapper_circuit_breaker_opened_total", endpoint=PRIMARY) == 1


async def test_a_swap_is_one_span_with_its_storage_and_runpod_requests_under_it(make_swapper: MakeSwapper,
                                                                                 spans) -> None:
    harness = await make_swapper()
    harness.fake.endpoint(PRIMARY).plan = JobPlan(run_s=0.05)
    reference = await harness.put_reference()
    call = harness.stub.Swap(harness.request(reference, job_id="job-42"), timeout=30,
                             metadata=(("traceparent", f"00-{TRACE_ID}-{CALLER_SPAN}-01"),))
    events: list[swapper_pb2.SwapEvent] = [event async for event in call]
    assert result_of(events).method == common_pb2.FACE_SWAP_METHOD_EXTERNAL_API
    (swap,) = await until(lambda: named(spans, "facegen.v1.SwapperService/Swap"), 5, "the Swap span")
    assert hex_id(swap)[0] == TRACE_ID and parent_id(swap) == CALLER_SPAN
    assert swap.attributes["facegen.job_id"] == "job-42"
    assert [event.name for event in swap.events][:2] == ["swap.stored", "swap.submitted"]
    assert swap.events[-1].name == "swap.result"
    children = [span for span in spans.get_finished_spans() if parent_id(span) == hex_id(swap)[1]]
    storage = [span for span in children if span.name.startswith("S3.")]
    runpod = [span for span in children if span.name in ("POST", "GET")]
    assert {span.name for span in storage} >= {"S3.PutObject"}, [span.name for span in children]
    assert any(span.name == "POST" for span in runpod) and any(span.name == "GET" for span in runpod)
    for span in runpod:
        url = str(span.attributes.get("url.full") or span.attributes.get("http.url") or "")
        assert "?" not in url, "URLs are recorded without their query"
    assert {hex_id(span)[0] for span in children} == {TRACE_ID}
