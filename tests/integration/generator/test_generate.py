"""Generate through the real gRPC server with the tiny models."""

from __future__ import annotations

import asyncio
import contextlib
import gc
import io
import logging
import os
import signal
from collections.abc import Callable
from typing import Any

import grpc
import numpy as np
import pytest
import torch
from grpc_health.v1 import health_pb2, health_pb2_grpc
from PIL import Image

from facegen.v1 import common_pb2, generator_pb2
from services.common import logs
from services.common.metrics import value
from services.generator.catalog import load_catalog
from services.generator.device import Device
from services.generator.device_process import ProcessRunner
from services.generator.device_thread import ThreadRunner
from services.generator.jobs import Job
from services.generator.params import GenerationParams
from services.generator.pipelines import PipelineRegistry
from services.generator.runner import encode_png, run_batch
from services.generator.settings import DEFAULT_CATALOG
from tests.waiting import until

pytestmark = pytest.mark.integration
# The start_generator fixture (see conftest.py): ``async with start_generator(**env) as gen``.
Starter = Callable[..., Any]
SMALL: dict[str, Any] = {"width": 64, "height": 64, "steps": 4}


def batches(gen: Any, outcome: str | None = None) -> float:
    """Pipeline calls the generator's metrics counted (of one outcome, or all)."""
    return sum(sample.value for family in gen.app.metrics.registry.collect()
               if family.name == "facegen_generator_batches" for sample in family.samples
               if sample.name.endswith("_total") and outcome in (None, sample.labels["outcome"]))


def logged(caplog: pytest.LogCaptureFixture, event: str) -> list[dict[str, Any]]:
    """The fields of every ``event`` line captured."""
    return [record.facegen_fields for record in caplog.records if getattr(record, "facegen_event", "") == event]


def kinds(events: list[generator_pb2.GenerateEvent]) -> list[str]:
    return [str(event.WhichOneof("event")) for event in events]


def images(events: list[generator_pb2.GenerateEvent]) -> list[generator_pb2.GeneratedImage]:
    return [event.image for event in events if event.WhichOneof("event") == "image"]


def pixels(png: bytes) -> np.ndarray:
    with Image.open(io.BytesIO(png)) as image:
        assert image.format == "PNG"
        return np.asarray(image.convert("RGB"), dtype=np.int16)


async def next_event(call: Any, kind: str) -> generator_pb2.GenerateEvent:
    """Reads ``call`` until an event of ``kind``."""
    async for event in call:
        if event.WhichOneof("event") == kind:
            return event  # type: ignore[no-any-return]
    raise AssertionError(f"stream ended before a {kind} event")


async def test_health_is_not_serving_until_the_default_model_is_loaded(start_generator: Starter) -> None:
    async with start_generator(load=False, GENERATOR_WARMUP="true") as gen:
        health = health_pb2_grpc.HealthStub(gen.channel)
        request = health_pb2.HealthCheckRequest(service="facegen.v1.GeneratorService")
        assert (await health.Check(request)).status == health_pb2.HealthCheckResponse.NOT_SERVING
        models = {m.name: m for m in (await gen.stub.ListModels(common_pb2.ListModelsRequest())).models}
        assert not models["tiny-sd"].loaded and models["tiny-sd"].is_default
        await gen.app.ready()
        assert (await health.Check(request)).status == health_pb2.HealthCheckResponse.SERVING
        models = {m.name: m for m in (await gen.stub.ListModels(common_pb2.ListModelsRequest())).models}
        assert models["tiny-sd"].loaded and not models["tiny-sdxl"].loaded
        assert (models["tiny-sd"].family, models["tiny-sd"].max_steps, list(models["tiny-sd"].loras)) == \
            ("sd", 50, ["tiny-sd-style"])


async def test_stream_order_seeds_and_determinism(start_generator: Starter) -> None:
    async with start_generator() as gen:
        events = await gen.generate(**SMALL, seed=1234, num_images=2, preview_every=2)
        assert kinds(events) == ["queued"] + ["step"] * 4 + ["image"] * 2 + ["done"]
        assert [(e.step.step, e.step.total_steps) for e in events[1:5]] == [(1, 4), (2, 4), (3, 4), (4, 4)]
        assert [bool(e.step.preview_png) for e in events[1:5]] == [False, True, False, True]
        with Image.open(io.BytesIO(events[2].step.preview_png)) as preview:
            assert preview.format == "PNG" and preview.size == (8, 8)
        got = images(events)
        assert [(i.index, i.seed, i.width, i.height) for i in got] == [(0, 1234, 64, 64), (1, 1235, 64, 64)]
        assert pixels(got[0].png).shape == (64, 64, 3)
        done = events[-1].done
        assert (done.model, done.batch_size) == ("tiny-sd", 1) and done.duration_ms > 0
        again = images(await gen.generate(**SMALL, seed=1234, num_images=2))
        assert [i.png for i in again] == [i.png for i in got]


async def test_random_seed_is_reported_and_reproduces_the_image(start_generator: Starter) -> None:
    async with start_generator() as gen:
        first = images(await gen.generate(**SMALL, seed=-1))[0]
        second = images(await gen.generate(**SMALL))[0]
        assert first.seed != second.seed
        assert images(await gen.generate(**SMALL, seed=first.seed))[0].png == first.png


@pytest.mark.parametrize(("fields", "code", "message"), [
    ({"width": 60}, grpc.StatusCode.INVALID_ARGUMENT, "width=60 is not allowed: tiny-sd takes a multiple of 8"),
    ({"steps": 500}, grpc.StatusCode.INVALID_ARGUMENT, "steps=500 is out of range: tiny-sd allows 1 to 50"),
    ({"num_images": 5}, grpc.StatusCode.INVALID_ARGUMENT, "num_images=5 is out of range: 1 to 4"),
    ({"guidance_scale": 99.0}, grpc.StatusCode.INVALID_ARGUMENT, "guidance_scale=99.0 is out of range"),
    ({"prompt": ""}, grpc.StatusCode.INVALID_ARGUMENT, "prompt is empty"),
    ({"model": "nope"}, grpc.StatusCode.NOT_FOUND, "model 'nope' is not in the catalog"),
    ({"lora": common_pb2.LoraSpec(name="nope")}, grpc.StatusCode.NOT_FOUND, "lora 'nope' is not in the catalog"),
    ({"lora": common_pb2.LoraSpec(name="", weight=1.0)}, grpc.StatusCode.INVALID_ARGUMENT,
     "lora.name is empty but lora.weight is set"),
    ({"lora": common_pb2.LoraSpec(name="tiny-sd-style", weight=float("nan"))}, grpc.StatusCode.INVALID_ARGUMENT,
     "lora.weight=nan is out of range"),
])
async def test_invalid_settings_are_refused_before_queueing(start_generator: Starter, fields: dict[str, Any],
                                                            code: grpc.StatusCode, message: str) -> None:
    async with start_generator() as gen:
        with pytest.raises(grpc.aio.AioRpcError) as error:
            await gen.generate(**{**SMALL, **fields})
        assert error.value.code() == code
        assert message in (error.value.details() or "")
        assert batches(gen) == 0


async def test_cancel_stops_the_loop_within_one_step_and_frees_the_slot(start_generator: Starter,
                                                                        caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO)
    async with start_generator(GENERATOR_MAX_BATCH="1") as gen:
        call = gen.stub.Generate(generator_pb2.GenerateRequest(prompt="long", width=256, height=256, steps=50))
        while (await next_event(call, "step")).step.step < 2:
            pass
        call.cancel()
        await until(lambda: batches(gen, "cancelled") == 1, 30, "a cancelled batch")
        (stopped,) = logged(caplog, "generate.interrupted")
        assert stopped["cancelled_after_step"] >= 2
        assert stopped["step"] <= stopped["cancelled_after_step"] + 1 < 50
        events = await gen.generate(**SMALL, seed=5)
        assert kinds(events)[-1] == "done"


async def test_queue_positions_and_queue_full(start_generator: Starter) -> None:
    async with start_generator(GENERATOR_QUEUE_SIZE="2", GENERATOR_MAX_BATCH="1",
                               GENERATOR_BATCH_WINDOW_MS="0") as gen:
        def request(prompt: str, **fields: Any) -> generator_pb2.GenerateRequest:
            return generator_pb2.GenerateRequest(prompt=prompt, **{**SMALL, **fields})

        running = gen.stub.Generate(request("busy", width=512, height=512, steps=50))
        await next_event(running, "step")
        second = gen.stub.Generate(request("second"))
        assert (await next_event(second, "queued")).queued.position == 0
        third = gen.stub.Generate(request("third", seed=3))
        assert (await next_event(third, "queued")).queued.position == 1
        with pytest.raises(grpc.aio.AioRpcError) as error:
            await gen.generate(**SMALL)
        assert error.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        assert "queue is full (2 requests waiting)" in (error.value.details() or "")
        second.cancel()
        assert (await next_event(third, "queued")).queued.position == 0
        running.cancel()
        rest = [event async for event in third]
        assert kinds(rest) == ["step"] * 4 + ["image", "done"]
        assert rest[-2].image.seed == 3


async def test_cancelling_fifty_queued_jobs_at_once_ends_each_cancelled_without_an_error_line(
        start_generator: Starter, caplog: pytest.LogCaptureFixture) -> None:
    async with start_generator(GENERATOR_QUEUE_SIZE="64", GENERATOR_MAX_BATCH="1",
                               GENERATOR_BATCH_WINDOW_MS="0") as gen:
        busy = gen.stub.Generate(generator_pb2.GenerateRequest(prompt="busy", width=512, height=512, steps=50))
        await next_event(busy, "step")
        calls = [gen.stub.Generate(generator_pb2.GenerateRequest(prompt=f"queued {i}", job_id=f"queued-{i}",
                                                                 **SMALL)) for i in range(50)]
        for call in calls:
            await next_event(call, "queued")
        registry = gen.app.metrics.registry
        assert value(registry, "facegen_generator_queue_depth") == 50
        caplog.clear()
        caplog.handler.addFilter(lambda record: setattr(record, "job_id", logs.job_id_var.get()) or True)
        with caplog.at_level(logging.INFO):
            for call in calls:
                call.cancel()
            codes = [await call.code() for call in calls]
            await until(lambda: value(registry, "facegen_generator_queue_depth") == 0, 30, "an empty queue")
            await until(lambda: len(_cancel_lines(caplog)) == 50, 30, "50 cancel lines")
            # Abandoned handler generators are finalised by the garbage collector, in a new task
            # and context: collect now, and let any task that creates run, so that what it logs is seen.
            gc.collect()
            await _let_finalisers_run()
            gc.collect()
            records = list(caplog.records)  # before the busy job's own cancellation is logged
        busy.cancel()
    assert codes == [grpc.StatusCode.CANCELLED] * 50
    cancelled = [r for r in records if "event=generate.cancelled" in r.getMessage()]
    assert sorted(r.job_id for r in cancelled) == sorted(f"queued-{i}" for i in range(50))
    assert all("where=queue" in r.getMessage() for r in cancelled)
    errors = [f"{r.name}: {r.getMessage()}" for r in records if r.levelno >= logging.ERROR]
    assert not errors


def _cancel_lines(caplog: pytest.LogCaptureFixture) -> list[logging.LogRecord]:
    return [r for r in caplog.records if "event=generate.cancelled" in r.getMessage()]


async def _let_finalisers_run() -> None:
    """Waits for the ``aclose()`` tasks that asyncio creates for async generators the garbage collector found."""
    for task in asyncio.all_tasks() - {asyncio.current_task()}:
        if "aclose" in repr(task.get_coro()):
            with contextlib.suppress(Exception):
                await task


async def test_compatible_requests_share_a_batch_and_match_their_single_runs(start_generator: Starter) -> None:
    requests = [{"prompt": "a red fox", "seed": 1, "num_images": 2}, {"prompt": "a blue boat", "seed": 7},
                {"prompt": "a green field", "seed": 9, "preview_every": 1}]
    async with start_generator(GENERATOR_MAX_BATCH="4", GENERATOR_BATCH_WINDOW_MS="10000") as gen:
        batched = await asyncio.gather(*(gen.generate(**SMALL, **fields) for fields in requests))
    async with start_generator(GENERATOR_MAX_BATCH="1") as gen:
        alone = [await gen.generate(**SMALL, **fields) for fields in requests]
    for fields, together, single in zip(requests, batched, alone, strict=True):
        assert together[-1].done.batch_size == 3 and single[-1].done.batch_size == 1
        assert kinds(together) == kinds(single)
        steps = [event.step for event in together if event.WhichOneof("event") == "step"]
        assert [step.step for step in steps] == [1, 2, 3, 4]
        assert all(bool(step.preview_png) == ("preview_every" in fields) for step in steps)
        pairs = list(zip(images(together), images(single), strict=True))
        assert len(pairs) == fields.get("num_images", 1)
        for a, b in pairs:
            assert (a.index, a.seed) == (b.index, b.seed)
            assert np.abs(pixels(a.png) - pixels(b.png)).max() <= 2


async def test_a_cancelled_batch_member_does_not_stop_the_others(start_generator: Starter,
                                                                   caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO)
    slow = {"width": 128, "height": 128, "steps": 30}
    async with start_generator(GENERATOR_MAX_BATCH="2", GENERATOR_BATCH_WINDOW_MS="10000") as gen:
        quitter = gen.stub.Generate(generator_pb2.GenerateRequest(job_id="quitter", prompt="quit", seed=1, **slow))
        stayer = asyncio.create_task(gen.generate(job_id="stayer", prompt="stay", seed=2, **slow))
        await next_event(quitter, "step")
        quitter.cancel()
        together = await stayer
        assert batches(gen) == batches(gen, "done") == 1
        (finished,) = logged(caplog, "generate.finished")
        assert (finished["requests"], finished["steps"], finished["left"]) == (2, 30, "quitter")
        assert together[-1].done.batch_size == 2
        assert [e.step.step for e in together if e.WhichOneof("event") == "step"] == list(range(1, 31))
    async with start_generator(GENERATOR_MAX_BATCH="1") as gen:
        alone = await gen.generate(prompt="stay", seed=2, **slow)
        assert alone[-1].done.batch_size == 1
        assert np.abs(pixels(images(together)[0].png) - pixels(images(alone)[0].png)).max() <= 2


async def test_lora_applies_to_its_request_only(start_generator: Starter, tiny_models_dir: Any) -> None:
    async with start_generator() as gen:
        styled = images(await gen.generate(**SMALL, seed=21, lora=common_pb2.LoraSpec(name="tiny-sd-style")))[0]
        plain = images(await gen.generate(**SMALL, seed=21))[0]
    registry = PipelineRegistry(load_catalog(DEFAULT_CATALOG, tiny_models_dir), Device("cpu"), 1, 1)
    params = GenerationParams(job_id="fresh", model="tiny-sd", family="sd", prompt="a red fox",
                              negative_prompt="", width=64, height=64, steps=4, guidance=5.0, seeds=(21,),
                              lora=None, preview_every=0)
    fresh = run_batch(registry.get("tiny-sd"), [Job(params, asyncio.get_running_loop())], Device("cpu"))
    assert plain.png == encode_png(fresh.images[0][0])
    assert styled.png != plain.png


async def test_sdxl_shaped_model_loads_on_first_use(start_generator: Starter) -> None:
    async with start_generator() as gen:
        events = await gen.generate(model="tiny-sdxl", width=128, height=64, steps=3, seed=4, num_images=2,
                                    negative_prompt="blurry", preview_every=3)
        assert kinds(events) == ["queued"] + ["step"] * 3 + ["image"] * 2 + ["done"]
        assert events[-1].done.model == "tiny-sdxl"
        assert [pixels(i.png).shape for i in images(events)] == [(64, 128, 3)] * 2
        with Image.open(io.BytesIO(events[3].step.preview_png)) as preview:
            assert preview.size == (16, 8)
        models = {m.name: m for m in (await gen.stub.ListModels(common_pb2.ListModelsRequest())).models}
        assert models["tiny-sdxl"].loaded and models["tiny-sdxl"].family == "sdxl"


async def test_flux_shaped_model_generates(start_generator: Starter) -> None:
    async with start_generator() as gen:
        events = await gen.generate(model="tiny-flux", width=64, height=128, steps=2, seed=8, preview_every=1)
        assert kinds(events) == ["queued"] + ["step"] * 2 + ["image", "done"]
        assert pixels(images(events)[0].png).shape == (128, 64, 3)
        with Image.open(io.BytesIO(events[1].step.preview_png)) as preview:
            assert preview.size == (8, 16)
        with pytest.raises(grpc.aio.AioRpcError) as error:
            await gen.generate(model="tiny-flux", negative_prompt="blurry")
        assert error.value.code() == grpc.StatusCode.INVALID_ARGUMENT


class _OutOfMemoryOnce:
    def __init__(self, pipe: Any) -> None:
        self._pipe = pipe
        self.calls = 0

    def __call__(self, **kwargs: Any) -> Any:
        self.calls += 1
        if self.calls == 1:
            raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 8.00 GiB")
        return self._pipe(**kwargs)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._pipe, name)


async def test_out_of_memory_fails_that_request_only(start_generator: Starter) -> None:
    # The device thread in this process, so that the test can reach the pipeline it calls.
    async with start_generator(GENERATOR_DEVICE_ISOLATION="thread") as gen:
        runner = gen.app.engine.runner
        assert isinstance(runner, ThreadRunner)
        model = runner.registry.get("tiny-sd")  # loaded already: no device work here
        model.pipe = _OutOfMemoryOnce(model.pipe)
        with pytest.raises(grpc.aio.AioRpcError) as error:
            await gen.generate(**SMALL)
        assert error.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        assert "out of device memory" in (error.value.details() or "")
        assert value(gen.app.metrics.registry, "facegen_generator_out_of_memory_total", {"model": "tiny-sd"}) == 1
        assert kinds(await gen.generate(**SMALL))[-1] == "done"


async def test_a_killed_device_process_fails_its_request_and_is_replaced(start_generator: Starter) -> None:
    async with start_generator() as gen:
        runner = gen.app.engine.runner
        assert isinstance(runner, ProcessRunner) and runner.pid is not None
        first_pid = runner.pid
        call = gen.stub.Generate(generator_pb2.GenerateRequest(prompt="doomed", width=128, height=128, steps=50))
        await next_event(call, "step")
        os.kill(first_pid, signal.SIGKILL)
        with pytest.raises(grpc.aio.AioRpcError) as error:
            async for _ in call:
                pass
        assert error.value.code() == grpc.StatusCode.UNAVAILABLE
        assert "device process exited" in (error.value.details() or "")
        events = await gen.generate(**SMALL, seed=3)
        assert kinds(events)[-1] == "done"
        assert runner.pid not in (None, first_pid) and runner.starts == 2
