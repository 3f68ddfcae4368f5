"""The model/LoRA catalog: the checked-in file, and clear errors for bad entries."""

from __future__ import annotations

import copy
import re
from pathlib import Path
from typing import Any

import pytest

from services.common.config import ConfigError
from services.generator.catalog import load_catalog, parse_catalog
from services.generator.settings import DEFAULT_CATALOG

pytestmark = pytest.mark.unit

MODELS_DIR = Path("/srv/models")

BASE: dict[str, Any] = {
    "default_model": "a",
    "models": {
        "a": {"family": "sd", "path": "a", "default_width": 512, "default_height": 512,
              "min_size": 256, "max_size": 1024, "default_steps": 20, "max_steps": 50,
              "default_guidance": 7.0, "max_guidance": 15.0},
        "b": {"family": "sdxl", "hf_id": "org/b", "variant": "fp16"},
    },
    "loras": {"style": {"path": "/abs/style.safetensors", "models": ["a"], "default_weight": 0.7}},
}


def with_change(path: tuple[str, ...], value: Any) -> dict[str, Any]:
    raw = copy.deepcopy(BASE)
    node = raw
    for key in path[:-1]:
        node = node[key]
    if value is None:
        del node[path[-1]]
    else:
        node[path[-1]] = value
    return raw


def test_checked_in_catalog_points_at_the_tiny_models() -> None:
    catalog = load_catalog(DEFAULT_CATALOG, MODELS_DIR)
    assert catalog.default_model == "tiny-sd"
    assert {"tiny-sd", "tiny-sdxl"} <= set(catalog.models)
    assert catalog.models["tiny-sd"].family == "sd"
    assert catalog.models["tiny-sdxl"].family == "sdxl"
    assert (catalog.models["tiny-flux"].family, catalog.models["tiny-flux"].size_multiple) == ("flux", 16)
    assert catalog.models["tiny-sd"].path == MODELS_DIR / "tiny-sd"
    assert catalog.loras["tiny-sd-style"].path == MODELS_DIR / "loras" / "tiny-sd-style.safetensors"
    assert catalog.loras_for("tiny-sd") == ["tiny-sd-style"]


def test_parse_fills_defaults_and_resolves_paths() -> None:
    catalog = parse_catalog(BASE, MODELS_DIR)
    a, b = catalog.models["a"], catalog.models["b"]
    assert a.source == str(MODELS_DIR / "a")
    assert (a.default_width, a.max_size, a.max_steps, a.max_guidance) == (512, 1024, 50, 15.0)
    assert b.path is None and b.source == "org/b" and b.variant == "fp16"
    assert b.size_multiple == 8 and b.dtype == "float16"
    assert catalog.loras["style"].path == Path("/abs/style.safetensors")
    assert catalog.loras["style"].default_weight == 0.7
    assert catalog.loras_for("b") == []


def test_flux_needs_sizes_in_multiples_of_16() -> None:
    raw = with_change(("models", "b"), {"family": "flux", "hf_id": "org/flux", "size_multiple": 8})
    with pytest.raises(ConfigError, match="multiple of 16"):
        parse_catalog(raw, MODELS_DIR)
    raw = with_change(("models", "b"), {"family": "flux", "hf_id": "org/flux", "dtype": "bfloat16"})
    assert parse_catalog(raw, MODELS_DIR).models["b"].size_multiple == 16


@pytest.mark.parametrize(("path", "value", "message"), [
    (("models", "a", "family"), "sd3", "family='sd3' must be one of sd, sdxl, flux"),
    (("models", "a", "hf_id"), "org/a", "exactly one of path"),
    (("models", "a", "path"), None, "exactly one of path"),
    (("models", "a", "default_width"), 516, "default_width=516 must be a multiple of 8"),
    (("models", "a", "default_steps"), 0, "default_steps=0 must be an integer ≥ 1"),
    (("models", "a", "max_steps"), 10, "max_steps=10 must be an integer ≥ 20"),
    (("models", "a", "default_guidance"), 30.0, "default_guidance=30.0 must be at least 0.0, at most 15.0"),
    (("models", "a", "dtype"), "int8", "dtype='int8'"),
    (("models", "a", "colour"), "red", "unknown keys ['colour']"),
    (("default_model",), "zzz", "default_model 'zzz' is not one of"),
    (("loras", "style", "models"), ["zzz"], "models ['zzz'] are not in the catalog"),
    (("loras", "style", "default_weight"), 3.0, "default_weight=3.0"),
    (("loras", "style", "path"), None, "path (a .safetensors file) is required"),
])
def test_bad_entries_name_the_key(path: tuple[str, ...], value: Any, message: str) -> None:
    with pytest.raises(ConfigError, match=re.escape(message)):
        parse_catalog(with_change(path, value), MODELS_DIR)


def test_unreadable_or_malformed_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="cannot be read"):
        load_catalog(tmp_path / "missing.toml", MODELS_DIR)
    bad = tmp_path / "bad.toml"
    bad.write_text("[models\n")
    with pytest.raises(ConfigError, match="not valid TOML"):
        load_catalog(bad, MODELS_DIR)
    empty = tmp_path / "empty.toml"
    empty.write_text("default_model = 'x'\n")
    with pytest.raises(ConfigError, match="at least one model"):
        load_catalog(empty, MODELS_DIR)

