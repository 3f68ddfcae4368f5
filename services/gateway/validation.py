"""Checks a JobRequest against the universal rules before any job exists.

Field checks are cheap and run first; image checks decode untrusted bytes, so
they run in a worker thread, a few at a time. Every violation raises
InvalidInput naming the field and the allowed range. The limits of the chosen
model (its sizes, steps, LoRAs) are checked next, against the generator's
catalog (``JobManager`` with services/common/model_limits.py).
"""

from __future__ import annotations

import asyncio
import math
from dataclasses import dataclass, field
from typing import Any

from facegen.v1 import common_pb2, gateway_pb2, generator_pb2
from services.common.errors import InvalidInput
from services.common.image_limits import CALLER_PHOTO, STORED_IMAGE
from services.common.images import sanitize

MAX_PROMPT_CHARS = 2000
MIN_SIDE, MAX_SIDE, SIDE_MULTIPLE = 64, 2048, 8
MAX_STEPS = 100
MAX_GUIDANCE = 30.0
MAX_IMAGES = 4
MAX_SEED = 2**32 - 1
MAX_LORA_WEIGHT = 2.0
MAX_NAME_CHARS = 200
MAX_KEY_CHARS = 512
MAX_PREVIEW_EVERY = MAX_STEPS
IMAGE_LIMITS = CALLER_PHOTO
# Re-encoding without metadata can make an image bigger; the swapper (and the worker)
# must still accept it.
MAX_CLEAN_BYTES = STORED_IMAGE.max_bytes


@dataclass
class JobSpec:
    """A validated request: what the orchestrator needs, with images already sanitised.

    Image bytes are dropped (set to None) by the orchestrator as soon as they
    have been sent upstream, so a job does not hold megabytes while it runs.
    """

    generate: generator_pb2.GenerateRequest | None
    num_images: int
    swap_options: common_pb2.SwapOptions
    reference_image: bytes | None = None
    reference_key: str = ""
    target_image: bytes | None = None
    idempotency_key: str = ""
    summary: dict[str, Any] = field(default_factory=dict)
    # The W3C traceparent of the call that submitted the job ("" without tracing): every run of the
    # job, on any gateway, continues that trace.
    traceparent: str = ""

    @property
    def template_mode(self) -> bool:
        """True when the face goes onto a given photo instead of generated images."""
        return self.generate is None

    @property
    def mode(self) -> str:
        """``generate`` or ``template`` (a label of the job metrics)."""
        return "template" if self.template_mode else "generate"


def _range_error(name: str, allowed: str, got: object) -> InvalidInput:
    return InvalidInput(f"{name} must be {allowed}; got {got}")


def check_fields(request: gateway_pb2.JobRequest) -> JobSpec:
    """Checks every non-image field; returns a JobSpec whose image fields are still raw."""
    template = bool(request.target_image)
    kind = request.WhichOneof("reference")
    if kind is None or (kind == "reference_image" and not request.reference_image) or (
            kind == "reference_key" and not request.reference_key):
        raise InvalidInput("reference_image or reference_key is required")
    if kind == "reference_key":
        key = request.reference_key
        if len(key) > MAX_KEY_CHARS or not key.isprintable():
            raise InvalidInput(
                f"reference_key must be a storage key returned by an earlier job "
                f"(printable, at most {MAX_KEY_CHARS} characters)")
    if len(request.idempotency_key) > MAX_NAME_CHARS:
        raise _range_error("idempotency_key", f"at most {MAX_NAME_CHARS} characters",
                           f"{len(request.idempotency_key)} characters")
    generate = None if template else _check_generation(request)
    num_images = 1 if template else (request.num_images or 1)
    spec = JobSpec(
        generate=generate,
        num_images=num_images,
        swap_options=request.swap_options,
        reference_key=request.reference_key if kind == "reference_key" else "",
        idempotency_key=request.idempotency_key,
    )
    spec.summary = {"mode": "template" if template else "generate", "images": num_images,
                    "model": request.model or "default", "reference": kind}
    return spec


def _check_generation(request: gateway_pb2.JobRequest) -> generator_pb2.GenerateRequest:
    prompt = request.prompt
    if not prompt.strip():
        raise _range_error("prompt", f"1 to {MAX_PROMPT_CHARS} characters", "an empty prompt")
    if len(prompt) > MAX_PROMPT_CHARS:
        raise _range_error("prompt", f"1 to {MAX_PROMPT_CHARS} characters", f"{len(prompt)} characters")
    if len(request.negative_prompt) > MAX_PROMPT_CHARS:
        raise _range_error("negative_prompt", f"at most {MAX_PROMPT_CHARS} characters",
                           f"{len(request.negative_prompt)} characters")
    if len(request.model) > MAX_NAME_CHARS:
        raise _range_error("model", f"at most {MAX_NAME_CHARS} characters",
                           f"{len(request.model)} characters")
    for name, value in (("width", request.width), ("height", request.height)):
        if value != 0 and (value < MIN_SIDE or value > MAX_SIDE or value % SIDE_MULTIPLE):
            raise _range_error(name, f"a multiple of {SIDE_MULTIPLE} in {MIN_SIDE}..{MAX_SIDE} "
                                     "(or 0 for the model's default)", value)
    if request.steps != 0 and not 1 <= request.steps <= MAX_STEPS:
        raise _range_error("steps", f"1..{MAX_STEPS} (or 0 for the model's default)", request.steps)
    if request.HasField("guidance_scale"):
        guidance = request.guidance_scale
        if not math.isfinite(guidance) or not 0.0 <= guidance <= MAX_GUIDANCE:
            raise _range_error("guidance_scale", f"0..{MAX_GUIDANCE:g}", guidance)
    if request.HasField("seed") and request.seed != -1 and not 0 <= request.seed <= MAX_SEED:
        raise _range_error("seed", f"-1 (random) or 0..{MAX_SEED}", request.seed)
    if request.num_images != 0 and not 1 <= request.num_images <= MAX_IMAGES:
        raise _range_error("num_images", f"1..{MAX_IMAGES}", request.num_images)
    if not 0 <= request.preview_every <= MAX_PREVIEW_EVERY:
        raise _range_error("preview_every", f"0..{MAX_PREVIEW_EVERY} (0 = no previews)",
                           request.preview_every)
    if request.HasField("lora"):
        _check_lora(request.lora)
    generate = generator_pb2.GenerateRequest(
        model=request.model,
        prompt=prompt,
        negative_prompt=request.negative_prompt,
        width=request.width,
        height=request.height,
        steps=request.steps,
        num_images=request.num_images or 1,
        preview_every=request.preview_every,
    )
    if request.HasField("guidance_scale"):
        generate.guidance_scale = request.guidance_scale
    if request.HasField("seed"):
        generate.seed = request.seed
    if request.HasField("lora") and request.lora.name.strip():
        generate.lora.CopyFrom(request.lora)
    return generate


def _check_lora(lora: common_pb2.LoraSpec) -> None:
    if lora.HasField("weight"):
        weight = lora.weight
        if not math.isfinite(weight) or not 0.0 <= weight <= MAX_LORA_WEIGHT:
            raise _range_error("lora.weight", f"0..{MAX_LORA_WEIGHT:g}", weight)
        if not lora.name.strip():
            raise InvalidInput("lora.name is empty but lora.weight is set; name a LoRA from the "
                               "model's catalog (see ListModels) or leave the weight unset")
    if len(lora.name) > MAX_NAME_CHARS:
        raise _range_error("lora.name", f"at most {MAX_NAME_CHARS} characters", f"{len(lora.name)} characters")


class RequestValidator:
    """Validates whole requests; decodes at most ``max_decodes`` images at once."""

    def __init__(self, max_decodes: int) -> None:
        self._decodes = asyncio.Semaphore(max_decodes)

    async def validate(self, request: gateway_pb2.JobRequest) -> JobSpec:
        """Field checks, then image checks and sanitising (EXIF orientation applied, metadata stripped)."""
        spec = check_fields(request)
        if request.WhichOneof("reference") == "reference_image":
            spec.reference_image = await self._sanitize(request.reference_image, "reference_image")
        if request.target_image:
            spec.target_image = await self._sanitize(request.target_image, "target_image")
        return spec

    async def _sanitize(self, data: bytes, field_name: str) -> bytes:
        async with self._decodes:
            clean, info = await asyncio.to_thread(sanitize, data, field_name, IMAGE_LIMITS)
        if len(clean) > MAX_CLEAN_BYTES:
            raise InvalidInput(
                f"{field_name} ({info.width}x{info.height} {info.format}) is {len(clean):,} bytes once "
                f"stripped of metadata; the limit is {MAX_CLEAN_BYTES:,} bytes: send a smaller image")
        return clean
