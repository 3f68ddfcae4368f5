"""Fixtures for the generator's unit tests: the tiny models, and pipelines loaded from them."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from services.generator.settings import DEFAULT_MODELS_DIR
from services.generator.tiny_models import ensure_built


@pytest.fixture(scope="session")
def tiny_models_dir(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """The repo's models/ after `make setup`, or a fresh build in a temporary directory."""
    # One fallback directory for the whole session: unit and integration tests share one build.
    yield ensure_built(DEFAULT_MODELS_DIR, tmp_path_factory.getbasetemp() / "tiny-models")
