"""The generator's metrics (queue, batches, steps, models and LoRAs on the device) and its spans, for real
generations on the tiny models, with the device in a child process and in a thread."""

from __future__ import annotations

from typing import Any

import pytest

from facegen.v1 import common_pb2, generator_pb2
from services.common.metrics import value
from tests.spans import hex_id, named, parent_id
from tests.waiting import until

pytestmark = pytest.mark.integration

Starter = Any
SMALL: dict[str, Any] = {"width": 64, "height": 64, "steps": 4}
TRACE_ID = "0af7651916cd43dd8448eb211c80319c"
CALLER_SPAN = "b7ad6b7169203331"


@pytest.mark.parametrize("isolation", ["process", "thread"])
async def test_a_generation_moves_the_batch_step_and_model_metrics(start_generator: Starter, isolation: str) -> None:
    async with start_generator(GENERATOR_DEVICE_ISOLATION=isolation) as gen:
        registry = gen.app.metrics.registry

        def metric(name: str, **labels: str) -> float:
            return value(registry, name, labels)

        assert metric("facegen_generator_model_loaded", model="tiny-sd") == 1
        assert metric("facegen_generator_model_load_seconds_count", model="tiny-sd") == 1
        await gen.generate(**SMALL, num_images=2, lora=common_pb2.LoraSpec(name="tiny-sd-style"))
        assert metric("facegen_generator_batches_total", model="tiny-sd", outcome="done") == 1
        assert metric("facegen_generator_batch_images_sum", model="tiny-sd") == 2
        assert metric("facegen_generator_batch_requests_count", model="tiny-sd") == 1
        assert metric("facegen_generator_queue_wait_seconds_count", model="tiny-sd") == 1
        assert metric("facegen_generator_step_seconds_count", model="tiny-sd") == 4
        assert 0 < metric("facegen_generator_step_seconds_sum", model="tiny-sd") < 10
        assert metric("facegen_generator_lora_loaded", model="tiny-sd", lora="tiny-sd-style") == 1
        assert metric("facegen_generator_queue_depth") == 0
        assert metric("facegen_generator_gpu_memory_allocated_bytes") == 0, "a CPU reports no GPU memory"
        assert metric("grpc_server_handled_total", grpc_type="server_stream", grpc_method="Generate",
                      grpc_service="facegen.v1.GeneratorService", grpc_code="OK") == 1


async def test_a_second_model_is_loaded_and_reported_on_first_use(start_generator: Starter) -> None:
    async with start_generator(GENERATOR_MAX_LOADED_MODELS="1") as gen:
        registry = gen.app.metrics.registry
        await gen.generate(**SMALL, model="tiny-flux")
        loaded = {model: value(registry, "facegen_generator_model_loaded", {"model": model})
                  for model in ("tiny-sd", "tiny-flux")}
        # One model at a time, but the default is never dropped: the new one is loaded beside it.
        assert loaded == {"tiny-sd": 1, "tiny-flux": 1}
        assert value(registry, "facegen_generator_model_load_seconds_count", {"model": "tiny-flux"}) == 1


async def test_a_generation_is_one_span_with_its_steps_as_events(start_generator: Starter, spans) -> None:
    async with start_generator() as gen:
        call = gen.stub.Generate(generator_pb2.GenerateRequest(job_id="job-9", prompt="a fox", **SMALL),
                                 metadata=(("traceparent", f"00-{TRACE_ID}-{CALLER_SPAN}-01"),))
        assert [event.WhichOneof("event") async for event in call][-1] == "done"
        (span,) = await until(lambda: named(spans, "facegen.v1.GeneratorService/Generate"), 5, "the call's span")
    assert hex_id(span)[0] == TRACE_ID and parent_id(span) == CALLER_SPAN
    assert span.attributes["facegen.job_id"] == "job-9"
    names = [event.name for event in span.events]
    assert names.count("generate.step") == 4 and "generate.batch_started" in names
    assert names[-1] == "generate.done"
