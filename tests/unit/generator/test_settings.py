"""Generator settings from the environment."""

from __future__ import annotations

from pathlib import Path

import pytest

from services.common.config import ConfigError
from services.generator.settings import DEFAULT_CATALOG, DEFAULT_MODELS_DIR, Settings

pytestmark = pytest.mark.unit


def test_defaults() -> None:
    settings = Settings.from_env({})
    assert settings.listen == "127.0.0.1:50052"
    assert settings.catalog_path == DEFAULT_CATALOG
    assert settings.models_dir == DEFAULT_MODELS_DIR
    assert DEFAULT_MODELS_DIR.name == "models" and (DEFAULT_MODELS_DIR.parent / "services").is_dir()
    assert (settings.device, settings.queue_size, settings.max_batch_images) == ("auto", 32, 8)
    assert settings.batch_window_ms == 10 and settings.warmup is True
    assert settings.device_isolation == "process" and settings.log_level == "INFO"


def test_overrides(tmp_path: Path) -> None:
    settings = Settings.from_env({
        "GENERATOR_LISTEN": "0.0.0.0:9000", "GENERATOR_CATALOG": str(tmp_path / "c.toml"),
        "GENERATOR_MODELS_DIR": str(tmp_path), "GENERATOR_DEVICE": "cuda:1", "GENERATOR_QUEUE_SIZE": "3",
        "GENERATOR_BATCH_WINDOW_MS": "0", "GENERATOR_MAX_BATCH": "1", "GENERATOR_WARMUP": "false",
        "GENERATOR_TORCH_THREADS": "2", "GENERATOR_DEVICE_ISOLATION": "Thread",
    })
    assert settings.listen == "0.0.0.0:9000"
    assert settings.catalog_path == tmp_path / "c.toml" and settings.models_dir == tmp_path
    assert (settings.device, settings.queue_size, settings.batch_window_ms) == ("cuda:1", 3, 0)
    assert (settings.max_batch_images, settings.warmup, settings.torch_threads) == (1, False, 2)
    assert settings.device_isolation == "thread"


@pytest.mark.parametrize(("name", "value", "message"), [
    ("GENERATOR_DEVICE", "tpu", "GENERATOR_DEVICE='tpu' is not auto, cpu, cuda or cuda:N"),
    ("GENERATOR_QUEUE_SIZE", "0", "GENERATOR_QUEUE_SIZE='0' is outside the allowed range [1, 10000]"),
    ("GENERATOR_MAX_BATCH", "many", "GENERATOR_MAX_BATCH='many' is not an integer (allowed range [1, 64])"),
    ("GENERATOR_BATCH_WINDOW_MS", "-1", "GENERATOR_BATCH_WINDOW_MS='-1' is outside the allowed range [0, 10000]"),
    ("GENERATOR_DEVICE_ISOLATION", "fiber", "GENERATOR_DEVICE_ISOLATION='fiber' is not one of process, thread"),
    ("GENERATOR_WARMUP", "perhaps", "GENERATOR_WARMUP='perhaps' is not a boolean (use true or false)"),
    ("GENERATOR_LOG_LEVEL", "chatty", "GENERATOR_LOG_LEVEL='chatty' is not one of DEBUG, INFO, WARNING, ERROR"),
])
def test_bad_values_name_the_variable_the_value_and_what_is_allowed(name: str, value: str, message: str) -> None:
    with pytest.raises(ConfigError) as caught:
        Settings.from_env({name: value})
    assert str(caught.value) == message


def test_the_log_level_has_one_name_for_every_service_and_keeps_the_documented_one() -> None:
    assert Settings.from_env({"LOG_LEVEL": "debug"}).log_level == "DEBUG"
    assert Settings.from_env({"GENERATOR_LOG_LEVEL": "warning", "LOG_LEVEL": "debug"}).log_level == "WARNING"
