"""JobRequest builders: photos from paths or bytes, settings by keyword.

The gateway validates every field (and says which one is wrong); these
helpers only spare the caller the protobuf plumbing: optional fields stay
unset unless given, and a photo may be bytes or a file path.
"""

from __future__ import annotations

import os
from pathlib import Path

from facegen.v1 import common_pb2, gateway_pb2

Photo = bytes | str | os.PathLike[str]


def photo_bytes(photo: Photo) -> bytes:
    """The bytes of ``photo``: given as bytes, or read from a file path."""
    if isinstance(photo, bytes | bytearray | memoryview):
        return bytes(photo)
    return Path(photo).read_bytes()


def job_request(prompt: str = "", *, reference: Photo | None = None, reference_key: str | None = None,
                target: Photo | None = None, negative_prompt: str = "", model: str = "", width: int = 0,
                height: int = 0, steps: int = 0, guidance_scale: float | None = None, seed: int | None = None,
                num_images: int = 1, lora: str | None = None, lora_weight: float | None = None,
                mouth_mask: bool = False, use_face_enhancer: bool = False, many_faces: bool = False,
                idempotency_key: str = "", preview_every: int = 0) -> gateway_pb2.JobRequest:
    """A JobRequest: a prompt job, or with ``target`` a template job (the face put onto that photo).

    Exactly one of ``reference`` (the face photo, bytes or a path) and
    ``reference_key`` (``JobResult.reference_key`` of an earlier job) is
    needed. Zero or None means the model's default for the generation
    settings; ``seed`` None or -1 is random (the seed used is reported).
    """
    if (reference is None) == (reference_key is None):
        raise ValueError("give exactly one of reference (a photo) and reference_key")
    request = gateway_pb2.JobRequest(
        prompt=prompt, negative_prompt=negative_prompt, model=model, width=width, height=height, steps=steps,
        num_images=num_images, idempotency_key=idempotency_key, preview_every=preview_every,
        swap_options=common_pb2.SwapOptions(mouth_mask=mouth_mask, use_face_enhancer=use_face_enhancer,
                                            many_faces=many_faces))
    if guidance_scale is not None:
        request.guidance_scale = guidance_scale
    if seed is not None:
        request.seed = seed
    if lora:
        request.lora.name = lora
        if lora_weight is not None:
            request.lora.weight = lora_weight
    elif lora_weight is not None:
        raise ValueError("lora_weight needs a lora name")
    if reference is not None:
        request.reference_image = photo_bytes(reference)
    else:
        request.reference_key = str(reference_key)
    if target is not None:
        request.target_image = photo_bytes(target)
    return request
