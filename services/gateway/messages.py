"""What a swap's outcome looks like in a job: its ImageResult and the event's message."""

from __future__ import annotations

from facegen.v1 import common_pb2, gateway_pb2, swapper_pb2
from services.common.names import method_name, reason_name


def image_result(index: int, seed: int, result: swapper_pb2.SwapResult) -> gateway_pb2.ImageResult:
    """The job's record of one finished image."""
    image = gateway_pb2.ImageResult(
        index=index, url=result.url, storage_key=result.key, content_type=result.content_type,
        width=result.width, height=result.height, seed=seed, face_swap_method=result.method,
        fallback_reason=result.fallback_reason, fallback_message=result.fallback_message)
    if result.HasField("identity_distance"):
        image.identity_distance = result.identity_distance
    return image


def result_message(index: int, result: swapper_pb2.SwapResult) -> str:
    """``image 0 ready (face swapped by external_api)`` (with the identity distance when the swapper measured
    it), or the fallback and why (``swap_not_like_reference``'s message names the distance)."""
    if result.method == common_pb2.FACE_SWAP_METHOD_NONE:
        reason = reason_name(result.fallback_reason)
        detail = f": {result.fallback_message}" if result.fallback_message else ""
        return f"image {index} ready without face swap ({reason}{detail})"
    identity = (f", identity distance {result.identity_distance:.2f}" if result.HasField("identity_distance")
                else "")
    return f"image {index} ready (face swapped by {method_name(result.method)}{identity})"
