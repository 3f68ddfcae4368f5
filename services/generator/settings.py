"""The generator's settings, read once from the environment at start (docs/generator.md lists each variable)."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Annotated, Literal

from pydantic import AliasChoices, Field, field_validator
from pydantic_settings import SettingsConfigDict

from services.common.config import LogLevel, Lowercase, ServerSettings

REPO_ROOT = Path(__file__).resolve().parents[2]
DEFAULT_CATALOG = Path(__file__).resolve().parent / "catalog.toml"
DEFAULT_MODELS_DIR = REPO_ROOT / "models"
_DEVICE = re.compile(r"^(auto|cpu|cuda(:\d+)?)$")


class Settings(ServerSettings):
    """Everything the generator reads: the GENERATOR_* variables."""

    model_config = SettingsConfigDict(env_prefix="GENERATOR_")

    listen: str = "127.0.0.1:50052"
    log_level: LogLevel = Field("INFO", validation_alias=AliasChoices("GENERATOR_LOG_LEVEL", "LOG_LEVEL"))
    catalog_path: Path = Field(DEFAULT_CATALOG, validation_alias="GENERATOR_CATALOG")
    # Base of the catalog's relative model paths.
    models_dir: Path = DEFAULT_MODELS_DIR
    # "auto", "cpu", "cuda" or "cuda:N".
    device: Annotated[str, Lowercase] = "auto"
    # Requests that may wait for the device; one more is RESOURCE_EXHAUSTED.
    queue_size: int = Field(32, ge=1, le=10_000)
    # How long the first request of a batch waits for compatible requests to join it.
    batch_window_ms: int = Field(10, ge=0, le=10_000)
    # Images per pipeline call (1 disables batching).
    max_batch_images: int = Field(8, ge=1, le=64, validation_alias="GENERATOR_MAX_BATCH")
    max_prompt_chars: int = Field(2000, ge=1, le=100_000)
    # torch intra-op threads; 0 = automatic (on a CPU one per core but one, see device.torch_threads).
    torch_threads: int = Field(0, ge=0, le=1024)
    warmup: bool = True
    # Pipelines kept in memory at once; the least recently used non-default one is dropped.
    max_loaded_models: int = Field(2, ge=1, le=64)
    # LoRA adapters kept attached to one pipeline (inactive ones cost memory only).
    max_loaded_loras: int = Field(4, ge=1, le=64)
    # "process": pipelines run in a child process (no GIL shared with the server); "thread": in this one.
    device_isolation: Annotated[Literal["process", "thread"], Lowercase] = "process"

    @field_validator("device")
    @classmethod
    def _known_device(cls, device: str) -> str:
        if not _DEVICE.match(device):
            raise ValueError("is not auto, cpu, cuda or cuda:N")
        return device

    @field_validator("catalog_path", "models_dir")
    @classmethod
    def _absolute(cls, path: Path) -> Path:
        # Relative paths are taken from the working directory at start, as the service was told.
        return path.expanduser().absolute()
