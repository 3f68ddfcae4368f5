"""Loading catalog models as diffusers pipelines, and switching LoRA adapters on them.

Every model, tiny or real, loads through ``from_pretrained`` with
``local_files_only=True``: a directory, or a Hugging Face id taken from the
local cache (so ``HF_HUB_OFFLINE=1`` works and nothing is downloaded at run
time). All methods here run on the device thread only.
"""

from __future__ import annotations

import gc
import logging
import time
from collections import OrderedDict
from typing import Any

from services.common import logs
from services.common.errors import FacegenError, FailedPrecondition, ResourceExhausted, Unavailable
from services.generator.catalog import Catalog, ModelSpec
from services.generator.device import Device, is_out_of_memory, release_cached_memory
from services.generator.device_report import DeviceReport
from services.generator.params import LoraChoice

log = logging.getLogger(__name__)

PIPELINE_CLASSES = {
    "sd": "StableDiffusionPipeline",
    "sdxl": "StableDiffusionXLPipeline",
    "flux": "FluxPipeline",
}


def quiet_libraries() -> None:
    """Turns off the loading progress bars of diffusers, transformers and huggingface_hub, and sends
    their log records through the service's handler (its format, escaping and level)."""
    import diffusers
    import transformers
    from huggingface_hub.utils import disable_progress_bars

    diffusers.utils.logging.disable_progress_bar()
    transformers.utils.logging.disable_progress_bar()
    disable_progress_bars()
    # Each library gives its logger a stderr handler of its own on import, which would write plain
    # text lines into a JSON log: drop them and let the records reach the root logger's handler.
    for library in ("diffusers", "transformers", "huggingface_hub"):
        library_logger = logging.getLogger(library)
        library_logger.handlers.clear()
        library_logger.propagate = True


def pipeline_class(family: str) -> Any:
    """The diffusers pipeline class of a catalog family."""
    import diffusers

    name = PIPELINE_CLASSES[family]
    cls = getattr(diffusers, name, None)
    if cls is None:
        raise Unavailable(f"{family} models need a diffusers release with {name}")
    return cls


class LoadedModel:
    """A pipeline on the device, with the LoRA adapters attached to it."""

    def __init__(self, spec: ModelSpec, pipe: Any, catalog: Catalog, max_loras: int) -> None:
        self.spec = spec
        self.pipe = pipe
        self._catalog = catalog
        self._max_loras = max_loras
        # Adapter names attached to the pipeline, least recently used first.
        self._adapters: OrderedDict[str, None] = OrderedDict()
        self._lora_enabled = False

    @property
    def adapters(self) -> tuple[str, ...]:
        """Names of the LoRA adapters attached (active or not)."""
        return tuple(self._adapters)

    def use_lora(self, choice: LoraChoice | None) -> None:
        """Makes ``choice`` the only active adapter, or disables every adapter for None.

        Disabled adapters are bypassed entirely (PEFT calls the base layer
        alone), so a request without a LoRA gives exactly the image of a
        freshly loaded pipeline.
        """
        if choice is None:
            if self._lora_enabled:
                self.pipe.disable_lora()
                self._lora_enabled = False
            return
        if choice.name in self._adapters:
            self._adapters.move_to_end(choice.name)
        else:
            self._attach(choice.name)
        self.pipe.enable_lora()
        self.pipe.set_adapters([choice.name], adapter_weights=[choice.weight])
        self._lora_enabled = True

    def _attach(self, name: str) -> None:
        from diffusers.utils import USE_PEFT_BACKEND

        if not USE_PEFT_BACKEND:
            raise FailedPrecondition("LoRA support is not installed on the generator (it needs peft)")
        while len(self._adapters) >= self._max_loras:
            oldest, _ = self._adapters.popitem(last=False)
            self.pipe.delete_adapters(oldest)
            logs.event(log, "lora.detached", model=self.spec.name, lora=oldest)
        entry = self._catalog.loras[name]
        try:
            self.pipe.load_lora_weights(str(entry.path), adapter_name=name)
        except Exception as exc:
            if is_out_of_memory(exc):
                raise
            logs.event(log, "lora.load_failed", logging.ERROR, lora=name, path=entry.path, error=exc, exc_info=exc)
            raise Unavailable(f"lora {name!r} could not be loaded on the generator (see its log)") from exc
        self._adapters[name] = None
        logs.event(log, "lora.attached", model=self.spec.name, lora=name)


class PipelineRegistry:
    """The pipelines in memory, loaded on first use, at most ``max_models`` at once."""

    def __init__(self, catalog: Catalog, device: Device, max_models: int, max_loras: int) -> None:
        self.catalog = catalog
        self.device = device
        self._max_models = max_models
        self._max_loras = max_loras
        self._loaded: OrderedDict[str, LoadedModel] = OrderedDict()
        # Replaced (never mutated) on every change, so other threads can read it safely.
        self._loaded_names: frozenset[str] = frozenset()
        # (model, seconds) of the loads since the last report.
        self._loads: list[tuple[str, float]] = []

    def loaded_names(self) -> frozenset[str]:
        """Names of the models in memory (safe to call from any thread)."""
        return self._loaded_names

    def report(self) -> DeviceReport:
        """The models and adapters in memory, the loads since the last report, and GPU memory (device thread)."""
        loads, self._loads = self._loads, []
        memory = None
        if self.device.is_cuda:
            import torch

            memory = (int(torch.cuda.memory_allocated(self.device.name)),
                      int(torch.cuda.memory_reserved(self.device.name)))
        return DeviceReport(loaded={name: model.adapters for name, model in self._loaded.items()},
                            loads=tuple(loads), memory=memory)

    def get(self, name: str) -> LoadedModel:
        """The loaded model ``name``, loading it (and dropping the least recently used) if needed."""
        model = self._loaded.get(name)
        if model is not None:
            self._loaded.move_to_end(name)
            return model
        self._make_room()
        started = time.perf_counter()
        model = self._load(self.catalog.models[name])
        self._loads.append((name, time.perf_counter() - started))
        self._loaded[name] = model
        self._loaded_names = frozenset(self._loaded)
        return model

    def _make_room(self) -> None:
        while len(self._loaded) >= self._max_models:
            victim = next((name for name in self._loaded if name != self.catalog.default_model), None)
            if victim is None:
                return
            del self._loaded[victim]
            self._loaded_names = frozenset(self._loaded)
            gc.collect()
            release_cached_memory(self.device)
            logs.event(log, "model.unloaded", model=victim)

    def _load(self, spec: ModelSpec) -> LoadedModel:
        cls = pipeline_class(spec.family)
        dtype = self.device.dtype_for(spec.dtype)
        kwargs: dict[str, Any] = {"dtype": dtype, "local_files_only": True}
        if spec.revision:
            kwargs["revision"] = spec.revision
        if spec.variant:
            kwargs["variant"] = spec.variant
        logs.event(log, "model.loading", model=spec.name, family=spec.family, source=spec.source,
                   device=self.device.name, dtype=str(dtype).removeprefix("torch."))
        if spec.path is not None and not (spec.path / "model_index.json").is_file():
            logs.event(log, "model.missing", logging.ERROR, model=spec.name, path=spec.path,
                       hint="run `make setup` (tiny models) or fix the catalog path")
            raise Unavailable(f"model {spec.name!r} is not installed on the generator")
        try:
            pipe = cls.from_pretrained(spec.source, **kwargs)
            pipe.set_progress_bar_config(disable=True)
            pipe.to(self.device.name)
        except FacegenError:
            raise
        except Exception as exc:
            if is_out_of_memory(exc):
                release_cached_memory(self.device)
                raise ResourceExhausted(f"model {spec.name!r} does not fit in the device's memory") from exc
            logs.event(log, "model.load_failed", logging.ERROR, model=spec.name, source=spec.source, error=exc,
                       exc_info=exc)
            raise Unavailable(f"model {spec.name!r} could not be loaded on the generator (see its log)") \
                from exc
        logs.event(log, "model.loaded", model=spec.name, attention=_attention_kinds(pipe))
        return LoadedModel(spec, pipe, self.catalog, self._max_loras)


def _attention_kinds(pipe: Any) -> str:
    """The attention processor classes in use (AttnProcessor2_0 is torch's SDPA)."""
    denoiser = getattr(pipe, "unet", None) or getattr(pipe, "transformer", None)
    processors = getattr(denoiser, "attn_processors", {}) or {}
    return ",".join(sorted({type(processor).__name__ for processor in processors.values()})) or "unknown"
