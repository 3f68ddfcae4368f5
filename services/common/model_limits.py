"""A generation request against one model's own limits: one rule for the gateway and the generator.

The generator publishes each model's limits (``ListModels``' ModelInfo). The
gateway checks a request against them at Submit, so a request that could
never run is refused before a job exists; the generator checks it again with
the same functions when it runs (its catalog may have changed meanwhile).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

from facegen.v1 import common_pb2, generator_pb2
from services.common.errors import InvalidInput, NotFound


@dataclass(frozen=True)
class Settled:
    """A request's generation settings with the model's defaults filled in, each within its limits."""

    width: int
    height: int
    steps: int
    # None: the model's default (ModelInfo carries it as a 32-bit float; its owner knows it exactly).
    guidance: float | None


def find_model(name: str, models: Sequence[common_pb2.ModelInfo]) -> common_pb2.ModelInfo:
    """The model called ``name`` (the default model when empty); NotFound naming the others."""
    name = name.strip()
    for model in models:
        if model.name == name or (not name and model.is_default):
            return model
    wanted = repr(name) if name else "the default model"
    raise NotFound(f"model {wanted} is not in the catalog; available: "
                   f"{', '.join(sorted(model.name for model in models)) or 'none'}")


def settle(request: generator_pb2.GenerateRequest, model: common_pb2.ModelInfo) -> Settled:
    """Fills in the model's defaults and checks every value against its limits (InvalidInput)."""
    width = _size("width", request.width or model.default_width, model)
    height = _size("height", request.height or model.default_height, model)
    steps = request.steps or model.default_steps
    if not 1 <= steps <= model.max_steps:
        raise InvalidInput(f"steps={steps} is out of range: {model.name} allows 1 to {model.max_steps}")
    guidance = None
    if request.HasField("guidance_scale"):
        guidance = request.guidance_scale
        if not math.isfinite(guidance) or not 0.0 <= guidance <= model.max_guidance:
            raise InvalidInput(
                f"guidance_scale={guidance} is out of range: {model.name} allows 0 to {model.max_guidance:g}")
    if not 0 <= request.preview_every <= steps:
        raise InvalidInput(
            f"preview_every={request.preview_every} is out of range: 0 (no previews) to steps ({steps})")
    if request.negative_prompt.strip() and not model.negative_prompt:
        raise InvalidInput(f"negative_prompt is not supported by {model.family} models such as {model.name}")
    return Settled(width=width, height=height, steps=steps, guidance=guidance)


def check_lora(request: generator_pb2.GenerateRequest, model: common_pb2.ModelInfo) -> None:
    """NotFound when the request names a LoRA that the model cannot use."""
    name = request.lora.name.strip()
    if name and name not in model.loras:
        raise NotFound(f"lora {name!r} is not available for {model.name}; available: "
                       f"{', '.join(model.loras) or 'none'}")


def _size(field: str, value: int, model: common_pb2.ModelInfo) -> int:
    multiple = model.size_multiple or 1
    if not model.min_size <= value <= model.max_size or value % multiple:
        raise InvalidInput(f"{field}={value} is not allowed: {model.name} takes a multiple of {multiple} "
                           f"from {model.min_size} to {model.max_size}")
    return value
