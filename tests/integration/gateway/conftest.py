"""A real gateway server on loopback in front of fake generator and swapper servers."""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import grpc
import pytest

from facegen.v1 import gateway_pb2_grpc
from services.common.config import MAX_MESSAGE_BYTES, ServerSettings
from services.common.server import message_size_options
from services.gateway.app import GatewayApp
from services.gateway.settings import Settings
from tests.fakes.grpc_upstreams import FakeUpstreams, GeneratorScript, SwapScript


@dataclass
class Gateway:
    app: GatewayApp
    address: str
    channel: grpc.aio.Channel
    stub: gateway_pb2_grpc.GatewayServiceStub


GatewayFactory = Callable[..., Awaitable[Gateway]]


@pytest.fixture
async def upstreams() -> AsyncIterator[FakeUpstreams]:
    async with FakeUpstreams(GeneratorScript(steps=3), SwapScript()) as fakes:
        yield fakes


@pytest.fixture
async def start_gateway(upstreams: FakeUpstreams) -> AsyncIterator[GatewayFactory]:
    started: list[Gateway] = []

    async def start(**overrides: Any) -> Gateway:
        values: dict[str, Any] = {
            "server": ServerSettings("127.0.0.1:0", 0, MAX_MESSAGE_BYTES),
            "generator_address": upstreams.generator_address,
            "swapper_address": upstreams.swapper_address,
            "connect_timeout_seconds": 2.0,
        }
        values.update(overrides)
        app = GatewayApp(Settings(**values))
        port = await app.start()
        address = f"127.0.0.1:{port}"
        channel = grpc.aio.insecure_channel(address, options=message_size_options(MAX_MESSAGE_BYTES))
        gateway = Gateway(app, address, channel, gateway_pb2_grpc.GatewayServiceStub(channel))
        started.append(gateway)
        return gateway

    yield start
    for gateway in started:
        await gateway.channel.close()
        await gateway.app.stop()


@pytest.fixture
async def gateway(start_gateway: GatewayFactory) -> Gateway:
    return await start_gateway()
