"""Pipeline calls on the tiny models: determinism, progress, previews, cancel, batching, LoRA, OOM."""

from __future__ import annotations

import asyncio
import io
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from PIL import Image

from facegen.v1 import generator_pb2
from services.common.errors import ResourceExhausted, Unavailable
from services.generator.catalog import Catalog, load_catalog, parse_catalog
from services.generator.device import Device, torch_threads
from services.generator.jobs import Job
from services.generator.params import GenerationParams, LoraChoice
from services.generator.pipelines import LoadedModel, PipelineRegistry
from services.generator.runner import BatchInterrupted, encode_png, run_batch, warm_up
from services.generator.settings import DEFAULT_CATALOG

pytestmark = pytest.mark.unit

CPU = Device("cpu")
SD = GenerationParams(job_id="j", model="tiny-sd", family="sd", prompt="a red fox", negative_prompt="",
                      width=64, height=64, steps=4, guidance=5.0, seeds=(11,), lora=None, preview_every=0)


class RecordingJob(Job):
    """A job that keeps its events in a list and can cancel itself after a given step."""

    def __init__(self, params: GenerationParams, cancel_after_step: int | None = None) -> None:
        super().__init__(params, asyncio.new_event_loop())
        self.recorded: list[generator_pb2.GenerateEvent] = []
        self._cancel_after_step = cancel_after_step

    def emit(self, event: generator_pb2.GenerateEvent) -> None:
        self.recorded.append(event)
        if event.step.step and event.step.step == self._cancel_after_step:
            self.cancel()

    def steps(self) -> list[generator_pb2.StepProgress]:
        return [event.step for event in self.recorded if event.WhichOneof("event") == "step"]


@pytest.fixture(scope="module")
def catalog(tiny_models_dir: Path) -> Catalog:
    return load_catalog(DEFAULT_CATALOG, tiny_models_dir)


@pytest.fixture(scope="module")
def registry(catalog: Catalog) -> PipelineRegistry:
    torch.set_num_threads(torch_threads(0, CPU) or 1)  # what the service does on a CPU
    return PipelineRegistry(catalog, CPU, max_models=3, max_loras=2)


@pytest.fixture
def sd(registry: PipelineRegistry) -> Iterator[LoadedModel]:
    model = registry.get("tiny-sd")
    yield model
    model.use_lora(None)


def run(model: LoadedModel, *params: GenerationParams) -> list[list[bytes]]:
    jobs = [RecordingJob(p) for p in params]
    output = run_batch(model, jobs, CPU)
    return [[encode_png(image) for image in images] for images in output.images]


def pixels(png: bytes) -> np.ndarray:
    with Image.open(io.BytesIO(png)) as image:
        return np.asarray(image.convert("RGB"), dtype=np.int16)


def test_same_seed_and_settings_give_the_same_png_bytes(sd: LoadedModel) -> None:
    first = run(sd, SD)[0][0]
    assert first.startswith(b"\x89PNG\r\n\x1a\n")
    assert run(sd, SD)[0][0] == first
    assert run(sd, replace(SD, seeds=(12,)))[0][0] != first


def test_image_i_uses_seed_plus_i(sd: LoadedModel) -> None:
    images = run(sd, replace(SD, seeds=(11, 12, 13)))[0]
    assert len(images) == 3
    # One pipeline call for three images: equal to the single-image runs within float tolerance.
    assert np.abs(pixels(images[0]) - pixels(run(sd, SD)[0][0])).max() <= 2
    assert np.abs(pixels(images[2]) - pixels(run(sd, replace(SD, seeds=(13,)))[0][0])).max() <= 2
    assert np.abs(pixels(images[2]) - pixels(images[0])).max() > 2


def test_one_step_event_per_step_with_previews_every_k(sd: LoadedModel) -> None:
    job = RecordingJob(replace(SD, steps=5, preview_every=2, width=96, height=64))
    output = run_batch(sd, [job], CPU)
    steps = job.steps()
    assert [(step.step, step.total_steps) for step in steps] == [(i, 5) for i in range(1, 6)]
    assert [bool(step.preview_png) for step in steps] == [False, True, False, True, False]
    with Image.open(io.BytesIO(steps[1].preview_png)) as preview:
        assert preview.format == "PNG" and preview.size == (96 // 8, 64 // 8)
    assert output.images[0][0].size == (96, 64)
    assert output.steps_run == 5


def test_cancel_stops_the_loop_within_one_step(sd: LoadedModel) -> None:
    job = RecordingJob(replace(SD, steps=20), cancel_after_step=2)
    with pytest.raises(BatchInterrupted) as stopped:
        run_batch(sd, [job], CPU)
    assert job.cancelled_after_step == 2
    assert stopped.value.step == 3  # the step running when the cancel came, and no more
    assert [step.step for step in job.steps()] == [1, 2]


def test_a_cancelled_member_does_not_stop_the_rest_of_its_batch(sd: LoadedModel) -> None:
    quitter = RecordingJob(replace(SD, steps=6, seeds=(1,)), cancel_after_step=1)
    stayer = RecordingJob(replace(SD, steps=6, seeds=(2,)))
    output = run_batch(sd, [quitter, stayer], CPU)
    assert [step.step for step in quitter.steps()] == [1]
    assert [step.step for step in stayer.steps()] == [1, 2, 3, 4, 5, 6]
    alone = run(sd, replace(SD, steps=6, seeds=(2,)))[0][0]
    assert np.abs(pixels(encode_png(output.images[1][0])) - pixels(alone)).max() <= 2


def test_a_batched_image_equals_the_same_request_run_alone(sd: LoadedModel) -> None:
    first = replace(SD, prompt="a red fox", seeds=(3, 4))
    second = replace(SD, prompt="a blue boat", seeds=(100,))
    third = replace(SD, prompt="a green field", negative_prompt="", seeds=(7,))
    batched = run(sd, first, second, third)
    assert [len(images) for images in batched] == [2, 1, 1]
    for params, images in zip((first, second, third), batched, strict=True):
        for alone, together in zip(run(sd, params)[0], images, strict=True):
            assert np.abs(pixels(alone) - pixels(together)).max() <= 2


def test_negative_prompts_change_the_image_and_batch_per_request(sd: LoadedModel) -> None:
    plain = run(sd, SD)[0][0]
    a = replace(SD, negative_prompt="blurry")
    b = replace(SD, negative_prompt="dark", seeds=(12,))
    batched = run(sd, a, b)
    assert batched[0][0] != plain
    assert np.abs(pixels(batched[1][0]) - pixels(run(sd, b)[0][0])).max() <= 2


def test_lora_changes_the_image_and_unloads_cleanly(sd: LoadedModel, catalog: Catalog) -> None:
    fresh = PipelineRegistry(catalog, CPU, max_models=1, max_loras=1).get("tiny-sd")
    reference = run(fresh, SD)[0][0]
    with_lora = run(sd, replace(SD, lora=LoraChoice("tiny-sd-style", 1.0)))[0][0]
    assert with_lora != reference
    half = run(sd, replace(SD, lora=LoraChoice("tiny-sd-style", 0.5)))[0][0]
    assert half not in (with_lora, reference)
    assert run(sd, SD)[0][0] == reference  # bit-identical to a freshly loaded pipeline
    assert sd.adapters == ("tiny-sd-style",)
    assert run(sd, replace(SD, lora=LoraChoice("tiny-sd-style", 1.0)))[0][0] == with_lora


def test_sdxl_shaped_model_generates(registry: PipelineRegistry) -> None:
    sdxl = registry.get("tiny-sdxl")
    assert type(sdxl.pipe).__name__ == "StableDiffusionXLPipeline"
    params = replace(SD, model="tiny-sdxl", family="sdxl", width=128, height=64, preview_every=1, steps=2)
    job = RecordingJob(params)
    output = run_batch(sdxl, [job], CPU)
    assert output.images[0][0].size == (128, 64)
    assert [step.step for step in job.steps()] == [1, 2]
    assert all(step.preview_png for step in job.steps())
    negative = run(sdxl, replace(params, negative_prompt="blurry"))[0][0]
    assert negative != encode_png(output.images[0][0])
    assert run(sdxl, replace(params, lora=LoraChoice("tiny-sdxl-style", 1.0)))[0][0] != \
        encode_png(output.images[0][0])
    assert run(sdxl, params)[0][0] == encode_png(output.images[0][0])


def test_flux_shaped_model_generates_with_unpacked_previews(registry: PipelineRegistry) -> None:
    flux = registry.get("tiny-flux")
    assert type(flux.pipe).__name__ == "FluxPipeline"
    params = replace(SD, model="tiny-flux", family="flux", width=128, height=64, steps=3, guidance=3.5,
                     preview_every=1, seeds=(5, 6))
    job = RecordingJob(params)
    output = run_batch(flux, [job], CPU)
    assert [image.size for image in output.images[0]] == [(128, 64)] * 2
    assert [(step.step, step.total_steps) for step in job.steps()] == [(1, 3), (2, 3), (3, 3)]
    with Image.open(io.BytesIO(job.steps()[0].preview_png)) as preview:
        assert preview.size == (16, 8)
    alone = run(flux, replace(params, seeds=(6,)))[0][0]
    assert np.abs(pixels(encode_png(output.images[0][1])) - pixels(alone)).max() <= 2


def test_registry_keeps_the_default_and_drops_the_least_recently_used(catalog: Catalog) -> None:
    registry = PipelineRegistry(catalog, CPU, max_models=2, max_loras=1)
    assert registry.loaded_names() == frozenset()
    default = registry.get("tiny-sd")
    registry.get("tiny-sdxl")
    assert registry.loaded_names() == {"tiny-sd", "tiny-sdxl"}
    registry.get("tiny-flux")
    assert registry.loaded_names() == {"tiny-sd", "tiny-flux"}
    assert registry.get("tiny-sd") is default


def test_missing_weights_are_unavailable_with_a_clear_message(tmp_path: Path, tiny_models_dir: Path) -> None:
    catalog = parse_catalog({
        "models": {"gone": {"family": "sd", "path": "gone", "default_width": 64, "default_height": 64,
                            "min_size": 64},
                   "tiny-sd": {"family": "sd", "path": str(tiny_models_dir / "tiny-sd"), "default_width": 64,
                               "default_height": 64, "min_size": 64}},
        "loras": {"lost": {"path": "lost.safetensors", "models": ["tiny-sd"]}},
    }, tmp_path)
    registry = PipelineRegistry(catalog, CPU, max_models=2, max_loras=1)
    with pytest.raises(Unavailable, match="model 'gone' is not installed on the generator"):
        registry.get("gone")
    model = registry.get("tiny-sd")
    with pytest.raises(Unavailable, match="lora 'lost' could not be loaded"):
        model.use_lora(LoraChoice("lost", 1.0))
    assert model.adapters == ()


class _OutOfMemoryOnce:
    """Wraps a pipeline; the first call fails like a GPU that ran out of memory."""

    def __init__(self, pipe: Any) -> None:
        self._pipe = pipe
        self.failed = False

    def __call__(self, **kwargs: Any) -> Any:
        if not self.failed:
            self.failed = True
            raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")
        return self._pipe(**kwargs)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._pipe, name)


def test_out_of_memory_is_resource_exhausted_and_the_next_call_works(sd: LoadedModel) -> None:
    real = sd.pipe
    sd.pipe = _OutOfMemoryOnce(real)
    try:
        with pytest.raises(ResourceExhausted, match="ran out of device memory for 1 image"):
            run(sd, SD)
        assert run(sd, SD)[0][0] == run(sd, SD)[0][0]
    finally:
        sd.pipe = real


def test_warm_up_runs_at_the_default_size(sd: LoadedModel) -> None:
    assert warm_up(sd) >= 0
