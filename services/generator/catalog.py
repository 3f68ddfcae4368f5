"""The model and LoRA catalog: which pipelines the generator can run, and their limits.

The catalog is a TOML file (``services/generator/catalog.toml`` by default,
``GENERATOR_CATALOG`` to use another)::

    default_model = "tiny-sd"

    [models.tiny-sd]
    family = "sd"                 # sd (1.x/2.x), sdxl or flux
    path = "tiny-sd"              # a diffusers directory; relative to GENERATOR_MODELS_DIR
    # hf_id = "org/name"          # ...or a Hugging Face id, taken from the local cache only
    # revision = "main"           # optional, with hf_id
    # variant = "fp16"            # optional weight variant (e.g. *.fp16.safetensors)
    dtype = "float16"             # on CUDA; a CPU always runs float32
    default_width = 128
    ...

    [loras.tiny-sd-style]
    path = "loras/tiny-sd-style.safetensors"
    models = ["tiny-sd"]          # models it applies to
    default_weight = 1.0

Reading the catalog imports no torch, so it is cheap to validate.
"""

from __future__ import annotations

import math
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from facegen.v1 import common_pb2
from services.common.config import ConfigError

FAMILIES = ("sd", "sdxl", "flux")
DTYPES = ("float16", "bfloat16", "float32")
# Families whose pipeline takes no negative prompt in plain (distilled guidance) mode.
FAMILIES_WITHOUT_NEGATIVE = frozenset({"flux"})
# The least side multiple each family's latent layout allows.
MIN_SIZE_MULTIPLE = {"sd": 8, "sdxl": 8, "flux": 16}


@dataclass(frozen=True)
class ModelSpec:
    """One catalog model: where its weights are and what a request may ask of it."""

    name: str
    family: str
    path: Path | None
    hf_id: str | None
    revision: str | None
    variant: str | None
    dtype: str
    default_width: int
    default_height: int
    min_size: int
    max_size: int
    size_multiple: int
    default_steps: int
    max_steps: int
    default_guidance: float
    max_guidance: float

    @property
    def source(self) -> str:
        """The directory or Hugging Face id given to ``from_pretrained``."""
        return str(self.path) if self.path is not None else str(self.hf_id)


@dataclass(frozen=True)
class LoraEntry:
    """One catalog LoRA: its safetensors file and the models it fits."""

    name: str
    path: Path
    models: tuple[str, ...]
    default_weight: float


@dataclass(frozen=True)
class Catalog:
    """Every model and LoRA the generator knows, and the default model."""

    default_model: str
    models: Mapping[str, ModelSpec]
    loras: Mapping[str, LoraEntry]

    def loras_for(self, model: str) -> list[str]:
        """Names of the LoRAs usable with ``model``, sorted."""
        return sorted(name for name, lora in self.loras.items() if model in lora.models)

    def info(self, spec: ModelSpec, loaded: bool = False) -> common_pb2.ModelInfo:
        """The model's limits as ListModels publishes them (and as requests are checked against)."""
        return common_pb2.ModelInfo(
            name=spec.name, family=spec.family, loaded=loaded, is_default=spec.name == self.default_model,
            default_width=spec.default_width, default_height=spec.default_height,
            min_size=spec.min_size, max_size=spec.max_size, size_multiple=spec.size_multiple,
            default_steps=spec.default_steps, max_steps=spec.max_steps,
            default_guidance=spec.default_guidance, max_guidance=spec.max_guidance,
            negative_prompt=spec.family not in FAMILIES_WITHOUT_NEGATIVE, loras=self.loras_for(spec.name))


def load_catalog(path: Path, models_dir: Path) -> Catalog:
    """Reads and checks the catalog at ``path``; relative weight paths are taken under ``models_dir``.

    Raises ConfigError naming the entry and key that is wrong.
    """
    try:
        raw = tomllib.loads(path.read_text())
    except OSError as exc:
        raise ConfigError(f"catalog {path} cannot be read: {exc.strerror}") from exc
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"catalog {path} is not valid TOML: {exc}") from exc
    return parse_catalog(raw, models_dir, origin=str(path))


def parse_catalog(raw: Mapping[str, Any], models_dir: Path, origin: str = "catalog") -> Catalog:
    """Builds a Catalog from parsed TOML (see ``load_catalog``)."""
    models_raw = raw.get("models")
    if not isinstance(models_raw, Mapping) or not models_raw:
        raise ConfigError(f"{origin}: [models] must define at least one model")
    models = {name: _parse_model(name, entry, models_dir, origin) for name, entry in models_raw.items()}
    default = raw.get("default_model", next(iter(models)))
    if default not in models:
        raise ConfigError(f"{origin}: default_model {default!r} is not one of {sorted(models)}")
    loras_raw = raw.get("loras", {})
    if not isinstance(loras_raw, Mapping):
        raise ConfigError(f"{origin}: [loras] must be a table")
    loras = {name: _parse_lora(name, entry, models, models_dir, origin) for name, entry in loras_raw.items()}
    unknown = set(raw) - {"default_model", "models", "loras"}
    if unknown:
        raise ConfigError(f"{origin}: unknown top-level keys {sorted(unknown)}")
    return Catalog(default_model=default, models=models, loras=loras)


_MODEL_KEYS = frozenset({
    "family", "path", "hf_id", "revision", "variant", "dtype", "default_width", "default_height",
    "min_size", "max_size", "size_multiple", "default_steps", "max_steps", "default_guidance",
    "max_guidance",
})


def _parse_model(name: str, entry: Any, models_dir: Path, origin: str) -> ModelSpec:
    where = f"{origin}: models.{name}"
    if not isinstance(entry, Mapping):
        raise ConfigError(f"{where} must be a table")
    unknown = set(entry) - _MODEL_KEYS
    if unknown:
        raise ConfigError(f"{where}: unknown keys {sorted(unknown)}")
    family = _choice(entry, "family", FAMILIES, where)
    path_value = entry.get("path")
    hf_id = entry.get("hf_id")
    if (path_value is None) == (hf_id is None):
        raise ConfigError(f"{where}: set exactly one of path (a local directory) or hf_id")
    path = _resolve(path_value, models_dir, where) if path_value is not None else None
    if hf_id is not None and (not isinstance(hf_id, str) or not hf_id.strip()):
        raise ConfigError(f"{where}: hf_id must be a non-empty string like 'org/name'")
    multiple = _int(entry, "size_multiple", MIN_SIZE_MULTIPLE[family], where, minimum=1)
    if multiple % MIN_SIZE_MULTIPLE[family]:
        raise ConfigError(
            f"{where}: size_multiple must be a multiple of {MIN_SIZE_MULTIPLE[family]} for {family}")
    min_size = _int(entry, "min_size", 256, where, minimum=multiple)
    max_size = _int(entry, "max_size", 1024, where, minimum=min_size)
    default_steps = _int(entry, "default_steps", 25, where, minimum=1)
    max_steps = _int(entry, "max_steps", 100, where, minimum=default_steps)
    max_guidance = _float(entry, "max_guidance", 20.0, where, minimum=0.0)
    spec = ModelSpec(
        name=name, family=family, path=path, hf_id=hf_id,
        revision=_optional_str(entry, "revision", where), variant=_optional_str(entry, "variant", where),
        dtype=_choice(entry, "dtype", DTYPES, where, default="float16"),
        default_width=_int(entry, "default_width", 512, where, minimum=1),
        default_height=_int(entry, "default_height", 512, where, minimum=1),
        min_size=min_size, max_size=max_size, size_multiple=multiple,
        default_steps=default_steps, max_steps=max_steps,
        default_guidance=_float(entry, "default_guidance", 7.0, where, minimum=0.0, maximum=max_guidance),
        max_guidance=max_guidance,
    )
    for key, value in (("default_width", spec.default_width), ("default_height", spec.default_height)):
        if not min_size <= value <= max_size or value % multiple:
            raise ConfigError(
                f"{where}: {key}={value} must be a multiple of {multiple} in [{min_size}, {max_size}]")
    return spec


def _parse_lora(name: str, entry: Any, models: Mapping[str, ModelSpec], models_dir: Path,
                origin: str) -> LoraEntry:
    where = f"{origin}: loras.{name}"
    if not isinstance(entry, Mapping):
        raise ConfigError(f"{where} must be a table")
    unknown = set(entry) - {"path", "models", "default_weight"}
    if unknown:
        raise ConfigError(f"{where}: unknown keys {sorted(unknown)}")
    if "path" not in entry:
        raise ConfigError(f"{where}: path (a .safetensors file) is required")
    targets = entry.get("models")
    if (not isinstance(targets, list) or not targets
            or not all(isinstance(target, str) for target in targets)):
        raise ConfigError(f"{where}: models must be a non-empty list of model names")
    missing = [target for target in targets if target not in models]
    if missing:
        raise ConfigError(f"{where}: models {missing} are not in the catalog")
    return LoraEntry(
        name=name, path=_resolve(entry["path"], models_dir, where), models=tuple(targets),
        default_weight=_float(entry, "default_weight", 1.0, where, minimum=0.0, maximum=2.0),
    )


def _resolve(value: Any, models_dir: Path, where: str) -> Path:
    if not isinstance(value, str) or not value.strip():
        raise ConfigError(f"{where}: path must be a non-empty string")
    path = Path(value).expanduser()
    return path if path.is_absolute() else models_dir / path


def _choice(entry: Mapping[str, Any], key: str, allowed: tuple[str, ...], where: str,
            default: str | None = None) -> str:
    value = entry.get(key, default)
    if value not in allowed:
        raise ConfigError(f"{where}: {key}={value!r} must be one of {', '.join(allowed)}")
    return str(value)


def _optional_str(entry: Mapping[str, Any], key: str, where: str) -> str | None:
    value = entry.get(key)
    if value is not None and not isinstance(value, str):
        raise ConfigError(f"{where}: {key} must be a string")
    return value


def _int(entry: Mapping[str, Any], key: str, default: int, where: str, *, minimum: int) -> int:
    value = entry.get(key, default)
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ConfigError(f"{where}: {key}={value!r} must be an integer ≥ {minimum}")
    return value


def _float(entry: Mapping[str, Any], key: str, default: float, where: str, *, minimum: float,
           maximum: float | None = None) -> float:
    value = entry.get(key, default)
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise ConfigError(f"{where}: {key}={value!r} must be a number")
    if value < minimum or (maximum is not None and value > maximum):
        high = "" if maximum is None else f", at most {maximum}"
        raise ConfigError(f"{where}: {key}={value} must be at least {minimum}{high}")
    return float(value)
