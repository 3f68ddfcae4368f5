"""One job through the real stack, traced and measured: the gateway's, generator's and swapper's spans form
one trace with the right parents (S3 and RunPod requests included), and every service's /metrics moves."""

from __future__ import annotations

import pytest
import requests
from prometheus_client.parser import text_string_to_metric_families

from facegen.v1 import gateway_pb2
from services.stack.launcher import ENDPOINT_ID, LocalStack
from tests.otlp_receiver import OtlpReceiver, ReceivedSpan

pytestmark = pytest.mark.e2e

TRACE_ID = "8f2b6e1c4d7a49e0b3c5d1f2a7e9c4b6"
CALLER_SPAN = "a1b2c3d4e5f60718"
Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]


def _job(face: bytes, **fields) -> gateway_pb2.JobRequest:
    return gateway_pb2.JobRequest(reference_image=face, prompt="portrait photo of a woman", steps=4, **fields)


def scrape(url: str) -> Samples:
    text = requests.get(url, timeout=10).text
    return {(sample.name, tuple(sorted(sample.labels.items()))): sample.value
            for family in text_string_to_metric_families(text) for sample in family.samples}


def total(samples: Samples, name: str, **labels: str) -> float:
    """The sum of ``name``'s samples whose labels include ``labels``."""
    return sum(value for (sample, sample_labels), value in samples.items()
               if sample == name and set(labels.items()) <= set(sample_labels))


def one(spans: list[ReceivedSpan], service: str, name: str) -> ReceivedSpan:
    found = [span for span in spans if span.service == service and span.name == name]
    assert len(found) == 1, f"{len(found)} spans {name} of {service}: {[(s.service, s.name) for s in spans]}"
    return found[0]


def test_one_job_is_one_trace_across_gateway_generator_swapper_s3_and_runpod(
        gateway, face, stack: LocalStack, otlp: OtlpReceiver) -> None:
    events = list(gateway.Run(_job(face, seed=7), timeout=120,
                              metadata=(("traceparent", f"00-{TRACE_ID}-{CALLER_SPAN}-01"),)))
    result = events[-1].result
    assert result.state == gateway_pb2.JOB_STATE_COMPLETED, result.message
    assert result.trace_id == TRACE_ID, "the terminal event names the caller's trace"
    assert gateway.Get(gateway_pb2.GetRequest(job_id=events[0].job_id), timeout=10).trace_id == TRACE_ID

    def complete(spans: list[ReceivedSpan]) -> bool:
        mine = {(span.service, span.name) for span in spans if span.trace_id == TRACE_ID}
        return {("facegen-gateway", "facegen.job"), ("facegen-generator", "facegen.v1.GeneratorService/Generate"),
                ("facegen-swapper", "facegen.v1.SwapperService/Swap"),
                ("facegen-gateway", "facegen.v1.GatewayService/Run")} <= mine
    spans = [span for span in otlp.wait_for(complete, 30, "the job's spans from every service")
             if span.trace_id == TRACE_ID]

    run = one(spans, "facegen-gateway", "facegen.v1.GatewayService/Run")
    job = one(spans, "facegen-gateway", "facegen.job")
    generate_in = one(spans, "facegen-generator", "facegen.v1.GeneratorService/Generate")
    swap_in = one(spans, "facegen-swapper", "facegen.v1.SwapperService/Swap")
    assert run.parent_id == CALLER_SPAN
    assert job.parent_id == run.span_id and job.attributes["facegen.job_id"] == events[0].job_id
    # The gateway's calls carry the job span's context: the callees' server spans are its children.
    assert generate_in.parent_id == swap_in.parent_id == job.span_id
    assert generate_in.attributes["facegen.job_id"] == swap_in.attributes["facegen.job_id"] == events[0].job_id
    assert generate_in.events.count("generate.step") == 4, "steps are events of the Generate span"
    assert "job.generating" in job.events and "job.terminal" in job.events
    under_swap = [span for span in spans if span.parent_id == swap_in.span_id]
    assert any(span.name == "S3.PutObject" for span in under_swap), [span.name for span in under_swap]
    runpod = [span for span in under_swap if span.name in ("POST", "GET")]
    assert {span.name for span in runpod} == {"POST", "GET"}, "the RunPod /run and /status requests"

    # The gateway's log names the trace on the job's lines.
    log = (stack.run_dir / "gateway.log").read_text()
    finished = [line for line in log.splitlines() if "event=job.finished" in line and events[0].job_id in line]
    assert finished and f"trace={TRACE_ID}/" in finished[0]


def test_every_services_metrics_move_for_a_job(gateway, face, stack: LocalStack) -> None:
    assert stack.addresses is not None
    urls = stack.addresses.metrics
    before = {name: scrape(url) for name, url in urls.items()}
    events = list(gateway.Run(_job(face, seed=8), timeout=120))
    assert events[-1].result.state == gateway_pb2.JOB_STATE_COMPLETED
    after = {name: scrape(url) for name, url in urls.items()}

    def moved(service: str, name: str, **labels: str) -> float:
        return total(after[service], name, **labels) - total(before[service], name, **labels)

    assert moved("gateway", "facegen_gateway_jobs_finished_total", mode="generate", state="completed") == 1
    assert moved("gateway", "facegen_gateway_images_total") == 1
    assert moved("gateway", "facegen_gateway_job_duration_seconds_count") == 1
    assert moved("gateway", "grpc_server_handled_total", grpc_method="Run", grpc_code="OK") == 1
    assert moved("gateway", "grpc_client_handled_total", grpc_method="Generate", grpc_code="OK") == 1
    assert moved("generator", "facegen_generator_batches_total", outcome="done") == 1
    assert moved("generator", "facegen_generator_step_seconds_count") == 4
    assert moved("generator", "grpc_server_handled_total", grpc_method="Generate", grpc_code="OK") == 1
    assert moved("swapper", "facegen_swapper_runpod_requests_total", endpoint=ENDPOINT_ID, route="run",
                  status="200") == 1
    assert moved("swapper", "facegen_swapper_remote_jobs_total", endpoint=ENDPOINT_ID) == 1
    assert moved("swapper", "facegen_swapper_storage_operation_duration_seconds_count", operation="put_object") >= 2
    assert moved("swapper", "grpc_server_handled_total", grpc_method="Swap", grpc_code="OK") == 1
    assert moved("runpod", "facegen_runpod_emulator_jobs_submitted_total", endpoint=ENDPOINT_ID) == 1
    assert moved("runpod", "facegen_runpod_emulator_jobs_total", endpoint=ENDPOINT_ID) == 1
