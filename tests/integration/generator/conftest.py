"""Fixtures for the generator's integration tests: a real gRPC server on loopback with the tiny models."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
import pytest

from facegen.v1 import generator_pb2, generator_pb2_grpc
from services.common.channel import internal_channel
from services.generator.app import GeneratorApp
from services.generator.settings import DEFAULT_MODELS_DIR, Settings
from services.generator.tiny_models import ensure_built


@pytest.fixture(scope="session")
def tiny_models_dir(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """The repo's models/ after `make setup`, or a fresh build in a temporary directory."""
    # One fallback directory for the whole session: unit and integration tests share one build.
    yield ensure_built(DEFAULT_MODELS_DIR, tmp_path_factory.getbasetemp() / "tiny-models")


@dataclass
class Running:
    """A started generator and a client stub connected to it."""

    app: GeneratorApp
    channel: grpc.aio.Channel
    stub: generator_pb2_grpc.GeneratorServiceStub
    port: int

    async def generate(self, **fields: Any) -> list[generator_pb2.GenerateEvent]:
        """All events of one Generate call (raises AioRpcError on an error status)."""
        fields.setdefault("prompt", "a red fox")
        request = generator_pb2.GenerateRequest(**fields)
        return [event async for event in self.stub.Generate(request, timeout=60)]


Starter = Callable[..., contextlib.AbstractAsyncContextManager[Running]]


@pytest.fixture
def start_generator(tiny_models_dir: Path) -> Starter:
    """``async with start_generator(load=True, GENERATOR_X="..."):`` runs a server for the block."""

    @contextlib.asynccontextmanager
    async def start(load: bool = True, **env: str) -> AsyncIterator[Running]:
        settings = Settings.from_env({
            "GENERATOR_LISTEN": "127.0.0.1:0", "GENERATOR_MODELS_DIR": str(tiny_models_dir),
            "GENERATOR_DEVICE": "cpu", "GENERATOR_WARMUP": "false", **env,
        })
        app = GeneratorApp(settings)
        port = await app.listen()
        channel = internal_channel(f"127.0.0.1:{port}")
        try:
            if load:
                await app.ready()
            yield Running(app, channel, generator_pb2_grpc.GeneratorServiceStub(channel), port)
        finally:
            await channel.close()
            await app.stop(grace=0)

    return start
