"""Request builders: photos from paths or bytes, optional fields left unset, idempotency keys."""

from __future__ import annotations

from pathlib import Path

import pytest

from facegen.v1 import gateway_pb2
from services.client import job_request
from services.client.sync import with_key

pytestmark = pytest.mark.unit


def test_a_prompt_job_from_a_path_leaves_unset_what_was_not_given(tmp_path: Path) -> None:
    face = tmp_path / "face.jpg"
    face.write_bytes(b"\xff\xd8\xff jpeg")
    request = job_request("a portrait", reference=face)
    assert request.reference_image == b"\xff\xd8\xff jpeg"
    assert not request.HasField("seed") and not request.HasField("guidance_scale")
    assert not request.HasField("lora") and not request.target_image
    assert request.num_images == 1


def test_a_template_job_from_bytes_with_every_option() -> None:
    request = job_request(reference=b"face", target=b"photo", seed=7, guidance_scale=4.5,
                          lora="style", lora_weight=0.6, mouth_mask=True, many_faces=True, width=512, height=768,
                          num_images=2, preview_every=5, idempotency_key="order-1")
    assert (request.reference_image, request.target_image) == (b"face", b"photo")
    assert request.seed == 7 and request.guidance_scale == 4.5
    assert request.lora.name == "style" and request.lora.weight == pytest.approx(0.6)
    assert request.swap_options.mouth_mask and request.swap_options.many_faces
    assert not request.swap_options.use_face_enhancer
    assert (request.width, request.height, request.num_images, request.preview_every) == (512, 768, 2, 5)
    assert request.idempotency_key == "order-1"


def test_a_reference_key_instead_of_a_photo() -> None:
    request = job_request("x", reference_key="refs/abc")
    assert request.WhichOneof("reference") == "reference_key" and request.reference_key == "refs/abc"


@pytest.mark.parametrize("fields", [{}, {"reference": b"a", "reference_key": "refs/b"}])
def test_exactly_one_reference_is_needed(fields: dict[str, object]) -> None:
    with pytest.raises(ValueError, match="exactly one"):
        job_request("x", **fields)  # type: ignore[arg-type]


def test_a_lora_weight_needs_a_name() -> None:
    with pytest.raises(ValueError, match="lora name"):
        job_request("x", reference=b"a", lora_weight=0.5)


def test_a_missing_photo_file_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError):
        job_request("x", reference=tmp_path / "nope.jpg")


def test_with_key_keeps_a_key_and_gives_each_keyless_request_its_own() -> None:
    keyed = gateway_pb2.JobRequest(prompt="x", idempotency_key="mine")
    assert with_key(keyed) is keyed
    bare = gateway_pb2.JobRequest(prompt="x")
    first, second = with_key(bare), with_key(bare)
    assert first.idempotency_key and second.idempotency_key and first.idempotency_key != second.idempotency_key
    assert len(first.idempotency_key) <= 200, "within the gateway's limit"
    assert bare.idempotency_key == "" and first.prompt == "x"
