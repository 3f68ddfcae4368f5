"""The gateway's copy of the generator's model catalog: kept a while, refreshed, kept through outages."""

from __future__ import annotations

import pytest

from facegen.v1 import common_pb2
from services.common.errors import Unavailable
from services.gateway.models import ModelCatalog

pytestmark = pytest.mark.unit


class Generator:
    def __init__(self) -> None:
        self.calls = 0
        self.down = False
        self.name = "tiny-sd"

    async def list_models(self) -> common_pb2.ListModelsResponse:
        self.calls += 1
        if self.down:
            raise Unavailable("the generator cannot be reached")
        return common_pb2.ListModelsResponse(models=[common_pb2.ModelInfo(name=self.name)])


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


async def names(catalog: ModelCatalog) -> list[str] | None:
    models = await catalog.models()
    return None if models is None else [model.name for model in models]


async def test_the_catalog_is_kept_for_its_maximum_age_then_fetched_again() -> None:
    generator, clock = Generator(), Clock()
    catalog = ModelCatalog(generator.list_models, max_age_s=30, clock=clock)
    assert await names(catalog) == ["tiny-sd"]
    generator.name = "tiny-sdxl"
    clock.now += 29
    assert await names(catalog) == ["tiny-sd"] and generator.calls == 1
    clock.now += 2
    assert await names(catalog) == ["tiny-sdxl"] and generator.calls == 2


async def test_while_the_generator_is_down_the_last_catalog_stays_and_none_is_known_before_the_first() -> None:
    generator, clock = Generator(), Clock()
    generator.down = True
    catalog = ModelCatalog(generator.list_models, max_age_s=30, clock=clock)
    assert await names(catalog) is None
    generator.down = False
    clock.now += 15
    assert await names(catalog) == ["tiny-sd"]
    generator.down = True
    clock.now += 31
    assert await names(catalog) == ["tiny-sd"], "an outage keeps the last catalog in use"
    calls = generator.calls
    assert await names(catalog) == ["tiny-sd"] and generator.calls == calls, "not asked again at once"
