"""The generator's settings, read once from the environment at start."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from services.common.config import ConfigError, Env, ServerSettings

REPO_ROOT = Path(__file__).resolve().parents[2]
DEFAULT_CATALOG = Path(__file__).resolve().parent / "catalog.toml"
DEFAULT_MODELS_DIR = REPO_ROOT / "models"
DEFAULT_LISTEN = "127.0.0.1:50052"
DEVICE_CHOICES = ("auto", "cpu", "cuda")
ISOLATION_CHOICES = ("process", "thread")


@dataclass(frozen=True)
class Settings:
    """Everything the generator reads from the environment (see docs/generator.md)."""

    server: ServerSettings
    catalog_path: Path
    models_dir: Path
    # "auto", "cpu", "cuda" or "cuda:N".
    device: str
    # Requests that may wait for the device; one more is RESOURCE_EXHAUSTED.
    queue_size: int
    # How long the first request of a batch waits for compatible requests to join it.
    batch_window_ms: int
    # Images per pipeline call (1 disables batching).
    max_batch_images: int
    max_prompt_chars: int
    # torch intra-op threads; 0 = automatic (on a CPU one per core but one, see device.torch_threads).
    torch_threads: int
    warmup: bool
    # Pipelines kept in memory at once; the least recently used non-default one is dropped.
    max_loaded_models: int
    # LoRA adapters kept attached to one pipeline (inactive ones cost memory only).
    max_loaded_loras: int
    log_level: str
    # "process": pipelines run in a child process (no GIL shared with the server); "thread": in this one.
    device_isolation: str

    @classmethod
    def from_env(cls, env: Env | None = None) -> Settings:
        """Reads the GENERATOR_* variables; ConfigError names a bad one."""
        env = env or Env()
        device = env.get_str("GENERATOR_DEVICE", "auto").strip().lower()
        if device not in DEVICE_CHOICES and not (device.startswith("cuda:") and device[5:].isdigit()):
            raise ConfigError(f"GENERATOR_DEVICE={device!r} must be auto, cpu, cuda or cuda:N")
        models_dir = Path(env.get_str("GENERATOR_MODELS_DIR", str(DEFAULT_MODELS_DIR))).expanduser()
        isolation = env.get_str("GENERATOR_DEVICE_ISOLATION", "process").strip().lower()
        if isolation not in ISOLATION_CHOICES:
            raise ConfigError(f"GENERATOR_DEVICE_ISOLATION={isolation!r} must be process or thread")
        return cls(
            server=ServerSettings.from_env("GENERATOR", DEFAULT_LISTEN, env),
            catalog_path=Path(env.get_str("GENERATOR_CATALOG", str(DEFAULT_CATALOG))).expanduser(),
            models_dir=models_dir if models_dir.is_absolute() else Path(os.getcwd()) / models_dir,
            device=device,
            queue_size=env.get_int("GENERATOR_QUEUE_SIZE", 32, minimum=1, maximum=10_000),
            batch_window_ms=env.get_int("GENERATOR_BATCH_WINDOW_MS", 10, minimum=0, maximum=10_000),
            max_batch_images=env.get_int("GENERATOR_MAX_BATCH", 8, minimum=1, maximum=64),
            max_prompt_chars=env.get_int("GENERATOR_MAX_PROMPT_CHARS", 2000, minimum=1,
                                         maximum=100_000),
            torch_threads=env.get_int("GENERATOR_TORCH_THREADS", 0, minimum=0, maximum=1024),
            warmup=env.get_bool("GENERATOR_WARMUP", True),
            max_loaded_models=env.get_int("GENERATOR_MAX_LOADED_MODELS", 2, minimum=1, maximum=64),
            max_loaded_loras=env.get_int("GENERATOR_MAX_LOADED_LORAS", 4, minimum=1, maximum=64),
            log_level=env.get_str("GENERATOR_LOG_LEVEL", "INFO").upper(),
            device_isolation=isolation,
        )
