"""A swap's outcome in the job: the image result copies the identity distance, the event says it."""

from __future__ import annotations

import pytest

from facegen.v1 import common_pb2, swapper_pb2
from services.gateway.messages import image_result, result_message

pytestmark = pytest.mark.unit


def _result(method: int, reason: int = 0, message: str = "", distance: float | None = None,
            ) -> swapper_pb2.SwapResult:
    result = swapper_pb2.SwapResult(url="http://x/0", key="results/j/0-swapped.jpg", content_type="image/jpeg",
                                    width=64, height=64, method=method, fallback_reason=reason,
                                    fallback_message=message)
    if distance is not None:
        result.identity_distance = distance
    return result


def test_a_measured_swap_carries_its_distance_to_the_image_and_the_message() -> None:
    result = _result(common_pb2.FACE_SWAP_METHOD_EXTERNAL_API, distance=0.41)
    image = image_result(0, 7, result)
    assert image.HasField("identity_distance") and image.identity_distance == pytest.approx(0.41)
    assert result_message(0, result) == "image 0 ready (face swapped by external_api, identity distance 0.41)"


def test_an_unmeasured_swap_has_no_distance() -> None:
    result = _result(common_pb2.FACE_SWAP_METHOD_EXTERNAL_API)
    assert not image_result(0, 7, result).HasField("identity_distance")
    assert result_message(0, result) == "image 0 ready (face swapped by external_api)"


@pytest.mark.parametrize(("reason", "name"), [
    (common_pb2.FALLBACK_REASON_SWAP_UNCHANGED, "swap_unchanged"),
    (common_pb2.FALLBACK_REASON_SWAP_NOT_LIKE_REFERENCE, "swap_not_like_reference"),
])
def test_the_new_fallback_reasons_are_named_in_the_message(reason: int, name: str) -> None:
    result = _result(common_pb2.FACE_SWAP_METHOD_NONE, reason, "what happened", distance=0.7)
    assert result_message(1, result) == f"image 1 ready without face swap ({name}: what happened)"
    image = image_result(1, 7, result)
    assert image.fallback_reason == reason and image.identity_distance == pytest.approx(0.7)
