"""Turning a GenerateRequest into checked generation parameters.

Everything a request may get wrong is refused here, before it is queued,
with INVALID_ARGUMENT naming the field and the allowed range (NOT_FOUND for an
unknown model or LoRA).
"""

from __future__ import annotations

import math
import secrets
from dataclasses import dataclass

from facegen.v1 import generator_pb2
from services.common.errors import InvalidInput, NotFound
from services.common.model_limits import settle
from services.generator.catalog import Catalog, ModelSpec

MAX_IMAGES = 4
# Seeds a caller may pass; the top leaves room for seed + image index.
MAX_SEED = 2**53 - 1
# Random seeds are drawn below 2**32 so that every client can show and re-enter them.
RANDOM_SEED_LIMIT = 2**32
LORA_MAX_WEIGHT = 2.0


@dataclass(frozen=True)
class LoraChoice:
    """A LoRA applied to one request."""

    name: str
    weight: float


@dataclass(frozen=True)
class GenerationParams:
    """A validated request: every default filled in, every value within its model's limits."""

    job_id: str
    model: str
    family: str
    prompt: str
    negative_prompt: str
    width: int
    height: int
    steps: int
    guidance: float
    # Image i of the request uses seeds[i] == seeds[0] + i.
    seeds: tuple[int, ...]
    lora: LoraChoice | None
    preview_every: int

    @property
    def num_images(self) -> int:
        """Images this request asks for."""
        return len(self.seeds)

    def batch_key(self) -> tuple[object, ...]:
        """Requests with equal keys can share one pipeline call.

        Whether a negative prompt is present is part of the key because SDXL
        encodes "no negative prompt" as zeros, not as the empty string.
        """
        return (self.model, self.width, self.height, self.steps, self.guidance, self.lora,
                bool(self.negative_prompt))


def validate(request: generator_pb2.GenerateRequest, catalog: Catalog, max_prompt_chars: int,
             job_id: str) -> GenerationParams:
    """Checks ``request`` against the catalog; raises InvalidInput or NotFound."""
    model = _model(request.model, catalog)
    prompt = request.prompt.strip()
    if not prompt:
        raise InvalidInput("prompt is empty; describe the image to generate")
    _check_length("prompt", request.prompt, max_prompt_chars)
    _check_length("negative_prompt", request.negative_prompt, max_prompt_chars)
    settled = settle(request, catalog.info(model))
    num_images = request.num_images or 1
    if not 1 <= num_images <= MAX_IMAGES:
        raise InvalidInput(f"num_images={num_images} is out of range: 1 to {MAX_IMAGES}")
    seed = request.seed if request.HasField("seed") else -1
    if seed == -1:
        seed = secrets.randbelow(RANDOM_SEED_LIMIT)
    elif not 0 <= seed <= MAX_SEED:
        raise InvalidInput(f"seed={seed} is out of range: -1 (random) or 0 to {MAX_SEED}")
    return GenerationParams(
        job_id=job_id, model=model.name, family=model.family, prompt=prompt,
        negative_prompt=request.negative_prompt.strip(), width=settled.width, height=settled.height,
        steps=settled.steps, guidance=model.default_guidance if settled.guidance is None else settled.guidance,
        seeds=tuple(seed + index for index in range(num_images)),
        lora=_lora(request, model, catalog), preview_every=request.preview_every,
    )


def _model(name: str, catalog: Catalog) -> ModelSpec:
    name = name.strip() or catalog.default_model
    spec = catalog.models.get(name)
    if spec is None:
        raise NotFound(f"model {name!r} is not in the catalog; available: {', '.join(sorted(catalog.models))}")
    return spec


def _check_length(field: str, text: str, limit: int) -> None:
    if len(text) > limit:
        raise InvalidInput(f"{field} is {len(text)} characters; the limit is {limit}")


def _lora(request: generator_pb2.GenerateRequest, model: ModelSpec, catalog: Catalog) -> LoraChoice | None:
    weighted = request.lora.HasField("weight")
    weight = request.lora.weight
    # A bad number is INVALID_ARGUMENT whatever the name, like every other bad number.
    if weighted and (not math.isfinite(weight) or not 0.0 <= weight <= LORA_MAX_WEIGHT):
        raise InvalidInput(f"lora.weight={weight} is out of range: 0 to {LORA_MAX_WEIGHT}")
    name = request.lora.name.strip()
    if not name:
        if weighted:
            raise InvalidInput("lora.name is empty but lora.weight is set; name a LoRA from the "
                               "model's catalog (see ListModels) or leave the weight unset")
        return None
    entry = catalog.loras.get(name)
    if entry is None:
        known = ", ".join(catalog.loras_for(model.name)) or "none"
        raise NotFound(f"lora {name!r} is not in the catalog; available for {model.name}: {known}")
    if model.name not in entry.models:
        raise InvalidInput(f"lora {name!r} does not fit model {model.name}; it fits {', '.join(entry.models)}")
    return LoraChoice(name=name, weight=weight if weighted else entry.default_weight)
