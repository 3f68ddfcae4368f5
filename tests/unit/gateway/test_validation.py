"""Input rules of the gateway: every violation is INVALID_ARGUMENT naming the field and range."""

from __future__ import annotations

import io
from typing import Any

import pytest
from PIL import Image

from facegen.v1 import common_pb2, gateway_pb2
from services.common.errors import InvalidInput
from services.gateway.validation import RequestValidator, check_fields
from tests.unit.gateway import sample_images as images

pytestmark = pytest.mark.unit


def request(**fields: Any) -> gateway_pb2.JobRequest:
    values: dict[str, Any] = {"prompt": "a portrait", "reference_key": "refs/abc.png"}
    values.update(fields)
    return gateway_pb2.JobRequest(**values)


def test_a_minimal_request_takes_the_model_defaults() -> None:
    spec = check_fields(request())
    assert spec.generate is not None
    assert spec.num_images == 1
    assert spec.generate.num_images == 1
    assert (spec.generate.width, spec.generate.height, spec.generate.steps) == (0, 0, 0)
    assert not spec.generate.HasField("guidance_scale")
    assert not spec.generate.HasField("seed")
    assert spec.reference_key == "refs/abc.png"
    assert not spec.template_mode


def test_every_setting_is_passed_to_the_generator() -> None:
    spec = check_fields(request(
        negative_prompt="blurry", model="tiny-sd", width=512, height=768, steps=30, guidance_scale=7.5,
        seed=2**32 - 1, num_images=4, lora=common_pb2.LoraSpec(name="film", weight=0.8), preview_every=5))
    generate = spec.generate
    assert generate is not None
    assert (generate.width, generate.height, generate.steps, generate.num_images) == (512, 768, 30, 4)
    assert generate.guidance_scale == pytest.approx(7.5)
    assert generate.seed == 2**32 - 1
    assert generate.lora.name == "film"
    assert generate.preview_every == 5
    assert generate.negative_prompt == "blurry"
    assert spec.num_images == 4


@pytest.mark.parametrize(("fields", "needles"), [
    ({"prompt": ""}, ["prompt", "1 to 2000 characters"]),
    ({"prompt": "   \n"}, ["prompt", "1 to 2000"]),
    ({"prompt": "x" * 2001}, ["prompt", "2001 characters"]),
    ({"negative_prompt": "x" * 2001}, ["negative_prompt", "2000"]),
    ({"width": 63}, ["width", "multiple of 8 in 64..2048", "63"]),
    ({"width": 100}, ["width", "multiple of 8"]),
    ({"width": 2056}, ["width", "64..2048"]),
    ({"height": 56}, ["height", "64..2048"]),
    ({"height": -8}, ["height"]),
    ({"steps": 101}, ["steps", "1..100"]),
    ({"steps": -1}, ["steps", "1..100"]),
    ({"guidance_scale": -0.5}, ["guidance_scale", "0..30"]),
    ({"guidance_scale": 30.5}, ["guidance_scale", "0..30"]),
    ({"guidance_scale": float("nan")}, ["guidance_scale", "0..30"]),
    ({"num_images": 5}, ["num_images", "1..4"]),
    ({"num_images": -1}, ["num_images", "1..4"]),
    ({"seed": -2}, ["seed", "-1 (random) or 0..4294967295"]),
    ({"seed": 2**32}, ["seed", "4294967295"]),
    ({"preview_every": -1}, ["preview_every"]),
    ({"guidance_scale": float("inf")}, ["guidance_scale", "0..30"]),
    ({"guidance_scale": float("-inf")}, ["guidance_scale", "0..30"]),
    ({"lora": common_pb2.LoraSpec(name="film", weight=2.5)}, ["lora.weight", "0..2"]),
    ({"lora": common_pb2.LoraSpec(name="film", weight=float("nan"))}, ["lora.weight", "0..2", "nan"]),
    ({"lora": common_pb2.LoraSpec(name="film", weight=float("inf"))}, ["lora.weight", "0..2", "inf"]),
    ({"lora": common_pb2.LoraSpec(name="film", weight=float("-inf"))}, ["lora.weight", "0..2"]),
    ({"lora": common_pb2.LoraSpec(name="", weight=0.5)}, ["lora.name", "lora.weight"]),
    ({"lora": common_pb2.LoraSpec(name="  ", weight=0.5)}, ["lora.name", "lora.weight"]),
    ({"lora": common_pb2.LoraSpec(name="", weight=0.0)}, ["lora.name", "lora.weight"]),
    ({"lora": common_pb2.LoraSpec(name="", weight=float("nan"))}, ["lora.weight", "0..2"]),
    ({"lora": common_pb2.LoraSpec(name="", weight=float("inf"))}, ["lora.weight", "0..2"]),
    ({"idempotency_key": "k" * 201}, ["idempotency_key", "200"]),
])
def test_each_violation_names_the_field_and_the_allowed_range(fields: dict[str, Any],
                                                              needles: list[str]) -> None:
    with pytest.raises(InvalidInput) as caught:
        check_fields(request(**fields))
    for needle in needles:
        assert needle in str(caught.value)


@pytest.mark.parametrize("fields", [
    {"width": 64, "height": 2048}, {"steps": 1}, {"steps": 100}, {"guidance_scale": 0.0},
    {"guidance_scale": 30.0}, {"seed": -1}, {"seed": 0}, {"num_images": 1}, {"prompt": "x" * 2000},
])
def test_values_at_the_edges_of_the_ranges_are_accepted(fields: dict[str, Any]) -> None:
    assert check_fields(request(**fields)).generate is not None


def test_a_reference_is_required() -> None:
    with pytest.raises(InvalidInput, match="reference_image or reference_key is required"):
        check_fields(gateway_pb2.JobRequest(prompt="a portrait"))
    with pytest.raises(InvalidInput, match="reference_image or reference_key is required"):
        check_fields(gateway_pb2.JobRequest(prompt="a portrait", reference_image=b""))


def test_a_reference_key_must_be_printable() -> None:
    with pytest.raises(InvalidInput, match="reference_key"):
        check_fields(request(reference_key="refs/\x00evil"))


def test_template_mode_ignores_generation_settings() -> None:
    spec = check_fields(request(prompt="", width=7, target_image=b"not checked here"))
    assert spec.template_mode
    assert spec.generate is None
    assert spec.num_images == 1


async def test_reference_bytes_are_rotated_by_exif_and_stripped_of_metadata() -> None:
    raw = images.jpeg_with_exif(width=80, height=40, orientation=6)
    with Image.open(io.BytesIO(raw)) as original:
        assert original.getexif()[0x0110] == "SecretCam 3000"
    spec = await RequestValidator(max_decodes=2).validate(
        gateway_pb2.JobRequest(prompt="a portrait", reference_image=raw))
    assert spec.reference_image is not None
    with Image.open(io.BytesIO(spec.reference_image)) as clean:
        assert clean.format == "JPEG"
        assert clean.size == (40, 80)  # the orientation was applied to the pixels
        assert len(clean.getexif()) == 0
        assert "exif" not in clean.info
    assert b"SecretCam" not in spec.reference_image


async def test_the_target_image_is_validated_and_sanitised_like_the_reference() -> None:
    raw = images.jpeg_with_exif(orientation=8)
    spec = await RequestValidator(max_decodes=2).validate(
        gateway_pb2.JobRequest(reference_image=images.png(), target_image=raw))
    assert spec.target_image is not None
    assert b"SecretCam" not in spec.target_image
    with pytest.raises(InvalidInput, match="target_image is truncated"):
        await RequestValidator(max_decodes=2).validate(
            gateway_pb2.JobRequest(reference_image=images.png(), target_image=raw[: len(raw) // 2]))


async def test_multi_picture_jpegs_are_accepted_and_leave_as_plain_jpegs() -> None:
    spec = await RequestValidator(max_decodes=2).validate(gateway_pb2.JobRequest(
        prompt="a portrait", reference_image=images.multi_picture_jpeg(), target_image=images.multi_picture_jpeg()))
    assert spec.reference_image is not None and spec.target_image is not None
    images.assert_plain_jpeg_of_the_primary_picture(spec.reference_image)
    images.assert_plain_jpeg_of_the_primary_picture(spec.target_image)


@pytest.mark.parametrize(("data", "needle"), [
    (images.gif(), "reference_image is not a JPEG, PNG or WebP image"),
    (b"\x89PNG\r\n\x1a\n" + b"\x00" * 64, "reference_image is truncated or corrupt"),
    (images.png()[:-40], "reference_image is truncated or corrupt"),
    (images.bomb_png(), "the limit is 40,000,000 pixels"),
    (b"\xff\xd8\xff" + b"\x00" * (10 * 1024 * 1024), "the limit is 10,485,760 bytes"),
])
async def test_bad_reference_images_are_refused(data: bytes, needle: str) -> None:
    with pytest.raises(InvalidInput) as caught:
        await RequestValidator(max_decodes=2).validate(
            gateway_pb2.JobRequest(prompt="a portrait", reference_image=data))
    assert needle in str(caught.value)
