"""One image-limit table: every service takes its limits from it, and no stage refuses what an earlier one accepted."""

from __future__ import annotations

import io
import json
import subprocess
import sys
from pathlib import Path

import pytest
from PIL import Image

from facegen.v1 import gateway_pb2
from services.common.config import MAX_MESSAGE_BYTES
from services.common.errors import InvalidInput
from services.common.image_limits import CALLER_PHOTO, STORED_IMAGE, SWAP_RESULT
from services.gateway.validation import IMAGE_LIMITS, MAX_CLEAN_BYTES, RequestValidator
from services.swapper.settings import Settings as SwapperSettings

pytestmark = pytest.mark.unit

REPO_ROOT = Path(__file__).resolve().parents[3]


def _png(width: int, height: int) -> bytes:
    out = io.BytesIO()
    Image.new("1", (width, height), 1).save(out, "PNG")
    return out.getvalue()


def test_the_table_imports_nothing_outside_the_standard_library() -> None:
    # The face-swap worker imports it in its own environment, and its image holds only this file.
    probe = ("import json, sys; before = set(sys.modules); import services.common.image_limits; "
             "print(json.dumps(sorted(set(sys.modules) - before)))")
    run = subprocess.run([sys.executable, "-c", probe], cwd=REPO_ROOT, capture_output=True, text=True,
                         timeout=60, check=True)
    loaded = json.loads(run.stdout)
    ours = {"services", "services.common", "services.common.image_limits"}
    foreign = [name for name in loaded if name not in ours and name.split(".")[0] not in sys.stdlib_module_names]
    assert not foreign
    assert ours <= set(loaded)


def test_every_stage_accepts_what_the_stage_before_passes_on() -> None:
    # Re-encoding keeps the pixels (EXIF rotation swaps the sides, and the limits are square),
    # and a result has the size of the photo it was swapped into.
    for earlier, later in ((CALLER_PHOTO, STORED_IMAGE), (STORED_IMAGE, SWAP_RESULT)):
        assert later.min_side <= earlier.min_side
        assert later.max_side >= earlier.max_side and later.max_pixels >= earlier.max_pixels
    assert (CALLER_PHOTO.min_side, CALLER_PHOTO.max_side) == (STORED_IMAGE.min_side, STORED_IMAGE.max_side)
    # A photo may grow when re-encoded without its metadata: the gateway passes on at most
    # what the swapper accepts, which must fit in one gRPC message.
    assert CALLER_PHOTO.max_bytes <= STORED_IMAGE.max_bytes == MAX_CLEAN_BYTES < MAX_MESSAGE_BYTES
    assert STORED_IMAGE.max_bytes <= SWAP_RESULT.max_bytes


def test_the_gateway_and_the_swapper_take_their_defaults_from_the_table() -> None:
    assert IMAGE_LIMITS == CALLER_PHOTO
    swapper = SwapperSettings.from_env({"S3_ENDPOINT_URL": "https://s3.example", "S3_ACCESS_KEY_ID": "k",
                                        "S3_SECRET_ACCESS_KEY": "s"})
    assert swapper.target_limits == STORED_IMAGE
    assert swapper.runpod.result_limits == SWAP_RESULT


@pytest.mark.parametrize(("size", "needle"), [
    ((STORED_IMAGE.min_side - 1, 64), f"each side must be at least {STORED_IMAGE.min_side}"),
    ((64, STORED_IMAGE.min_side - 1), f"each side must be at least {STORED_IMAGE.min_side}"),
    ((STORED_IMAGE.max_side + 1, 16), f"each side must be at most {STORED_IMAGE.max_side}"),
])
async def test_the_gateway_refuses_photos_the_worker_would_refuse(size: tuple[int, int], needle: str) -> None:
    for field in ("reference_image", "target_image"):
        request = gateway_pb2.JobRequest(prompt="a portrait", reference_image=_png(64, 64))
        setattr(request, field, _png(*size))
        with pytest.raises(InvalidInput, match=needle) as caught:
            await RequestValidator(max_decodes=1).validate(request)
        assert field in str(caught.value)


@pytest.mark.parametrize("size", [(CALLER_PHOTO.min_side, CALLER_PHOTO.min_side), (CALLER_PHOTO.max_side, 16)])
async def test_the_gateway_accepts_photos_at_the_edges(size: tuple[int, int]) -> None:
    spec = await RequestValidator(max_decodes=1).validate(
        gateway_pb2.JobRequest(prompt="a portrait", reference_image=_png(*size), target_image=_png(*size)))
    assert spec.reference_image and spec.target_image
