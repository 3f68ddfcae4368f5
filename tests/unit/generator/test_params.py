"""Request validation: defaults, limits named in INVALID_ARGUMENT messages, seeds, LoRA choice."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest

from facegen.v1 import common_pb2, generator_pb2
from services.common.errors import InvalidInput, NotFound
from services.generator.catalog import Catalog, load_catalog
from services.generator.params import MAX_SEED, RANDOM_SEED_LIMIT, LoraChoice, validate
from services.generator.settings import DEFAULT_CATALOG

pytestmark = pytest.mark.unit


@pytest.fixture(scope="module")
def catalog() -> Catalog:
    return load_catalog(DEFAULT_CATALOG, Path("/models"))


def request(**fields: Any) -> generator_pb2.GenerateRequest:
    fields.setdefault("prompt", "a red fox")
    return generator_pb2.GenerateRequest(**fields)


def test_defaults_come_from_the_default_model(catalog: Catalog) -> None:
    params = validate(request(), catalog, 100, "job-1")
    spec = catalog.models["tiny-sd"]
    assert params.model == "tiny-sd" and params.family == "sd" and params.job_id == "job-1"
    assert (params.width, params.height) == (spec.default_width, spec.default_height)
    assert params.steps == spec.default_steps and params.guidance == spec.default_guidance
    assert params.num_images == 1 and params.lora is None and params.preview_every == 0
    assert 0 <= params.seeds[0] < RANDOM_SEED_LIMIT


def test_explicit_values_are_kept(catalog: Catalog) -> None:
    params = validate(request(model="tiny-sdxl", width=64, height=192, steps=3, guidance_scale=0.0,
                              seed=42, num_images=3, negative_prompt=" blurry ", preview_every=2),
                      catalog, 100, "j")
    assert (params.model, params.family, params.width, params.height) == ("tiny-sdxl", "sdxl", 64, 192)
    assert params.steps == 3 and params.guidance == 0.0 and params.negative_prompt == "blurry"
    assert params.seeds == (42, 43, 44)
    assert params.preview_every == 2


def test_random_seed_differs_per_request_and_minus_one_means_random(catalog: Catalog) -> None:
    seeds = {validate(request(seed=-1, num_images=2), catalog, 100, "j").seeds for _ in range(5)}
    assert len(seeds) == 5
    assert all(second == first + 1 for first, second in seeds)


@pytest.mark.parametrize(("fields", "message"), [
    ({"prompt": "   "}, "prompt is empty"),
    ({"prompt": "x" * 101}, "prompt is 101 characters; the limit is 100"),
    ({"negative_prompt": "x" * 101}, "negative_prompt is 101 characters; the limit is 100"),
    ({"width": 68}, "width=68 is not allowed: tiny-sd takes a multiple of 8 from 64 to 512"),
    ({"height": 1024}, "height=1024 is not allowed: tiny-sd takes a multiple of 8 from 64 to 512"),
    ({"width": -8}, "width=-8 is not allowed"),
    ({"steps": 51}, "steps=51 is out of range: tiny-sd allows 1 to 50"),
    ({"steps": -1}, "steps=-1 is out of range"),
    ({"guidance_scale": 20.5}, "guidance_scale=20.5 is out of range: tiny-sd allows 0 to 20"),
    ({"guidance_scale": float("nan")}, "guidance_scale=nan is out of range"),
    ({"num_images": 5}, "num_images=5 is out of range: 1 to 4"),
    ({"num_images": -1}, "num_images=-1 is out of range"),
    ({"seed": -2}, f"seed=-2 is out of range: -1 (random) or 0 to {MAX_SEED}"),
    ({"seed": MAX_SEED + 1}, "is out of range"),
    ({"preview_every": 21}, "preview_every=21 is out of range: 0 (no previews) to steps (20)"),
    ({"lora": common_pb2.LoraSpec(name="tiny-sdxl-style")},
     "lora 'tiny-sdxl-style' does not fit model tiny-sd; it fits tiny-sdxl"),
    ({"guidance_scale": float("inf")}, "guidance_scale=inf is out of range"),
    ({"guidance_scale": float("-inf")}, "guidance_scale=-inf is out of range"),
    ({"lora": common_pb2.LoraSpec(name="tiny-sd-style", weight=2.5)}, "lora.weight=2.5 is out of range: 0 to 2"),
    ({"lora": common_pb2.LoraSpec(name="tiny-sd-style", weight=float("nan"))}, "lora.weight=nan is out of range"),
    ({"lora": common_pb2.LoraSpec(name="tiny-sd-style", weight=float("inf"))}, "lora.weight=inf is out of range"),
    ({"lora": common_pb2.LoraSpec(name="tiny-sd-style", weight=float("-inf"))}, "lora.weight=-inf is out of range"),
    # A bad number is INVALID_ARGUMENT whatever the name, like every other bad number.
    ({"lora": common_pb2.LoraSpec(name="nope", weight=float("nan"))}, "lora.weight=nan is out of range"),
    ({"lora": common_pb2.LoraSpec(name="", weight=float("inf"))}, "lora.weight=inf is out of range"),
    ({"lora": common_pb2.LoraSpec(name="", weight=0.5)}, "lora.name is empty but lora.weight is set"),
    ({"lora": common_pb2.LoraSpec(name=" ", weight=0.0)}, "lora.name is empty but lora.weight is set"),
])
def test_invalid_settings_name_the_field_and_range(catalog: Catalog, fields: dict[str, Any],
                                                   message: str) -> None:
    with pytest.raises(InvalidInput, match=re.escape(message)):
        validate(request(**fields), catalog, 100, "j")


def test_flux_takes_no_negative_prompt_and_sizes_in_multiples_of_16(catalog: Catalog) -> None:
    with pytest.raises(InvalidInput, match="negative_prompt is not supported by flux models such as tiny-flux"):
        validate(request(model="tiny-flux", negative_prompt="blurry"), catalog, 100, "j")
    with pytest.raises(InvalidInput, match="width=72 is not allowed: tiny-flux takes a multiple of 16"):
        validate(request(model="tiny-flux", width=72), catalog, 100, "j")
    assert validate(request(model="tiny-flux"), catalog, 100, "j").guidance == 3.5


def test_unknown_model_and_lora_are_not_found(catalog: Catalog) -> None:
    with pytest.raises(NotFound, match=re.escape(
            "model 'sd99' is not in the catalog; available: tiny-flux, tiny-sd, tiny-sdxl")):
        validate(request(model="sd99"), catalog, 100, "j")
    with pytest.raises(NotFound, match=re.escape("lora 'nope' is not in the catalog; available for tiny-sd: "
                                                 "tiny-sd-style")):
        validate(request(lora=common_pb2.LoraSpec(name="nope")), catalog, 100, "j")


def test_unset_lora_weight_means_the_catalog_default_and_zero_means_zero(catalog: Catalog) -> None:
    unset = validate(request(lora=common_pb2.LoraSpec(name="tiny-sd-style")), catalog, 100, "j")
    assert unset.lora == LoraChoice("tiny-sd-style", catalog.loras["tiny-sd-style"].default_weight)
    explicit = validate(request(lora=common_pb2.LoraSpec(name="tiny-sd-style", weight=0.5)), catalog, 100, "j")
    assert explicit.lora == LoraChoice("tiny-sd-style", 0.5)
    zero = validate(request(lora=common_pb2.LoraSpec(name="tiny-sd-style", weight=0.0)), catalog, 100, "j")
    assert zero.lora == LoraChoice("tiny-sd-style", 0.0)


def test_batch_key_groups_compatible_requests(catalog: Catalog) -> None:
    def key(**fields: Any) -> tuple[object, ...]:
        return validate(request(**{"seed": 1, **fields}), catalog, 100, "j").batch_key()

    base = key()
    assert key(prompt="another prompt", seed=9, num_images=3, preview_every=1) == base
    assert key(negative_prompt="a") == key(negative_prompt="b") != base
    for different in ({"width": 64}, {"steps": 4}, {"guidance_scale": 1.0}, {"model": "tiny-sdxl"},
                      {"lora": common_pb2.LoraSpec(name="tiny-sd-style")}):
        assert key(**different) != base, different
