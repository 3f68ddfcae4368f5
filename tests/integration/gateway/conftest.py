"""A real gateway server on loopback in front of fake generator and swapper servers."""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import grpc
import pytest

from facegen.v1 import gateway_pb2_grpc
from services.common.config import MAX_MESSAGE_BYTES
from services.common.redis import RedisSettings
from services.common.server import message_size_options
from services.gateway.app import GatewayApp
from services.gateway.memory_store import InMemoryJobStore
from services.gateway.settings import Settings
from tests.fakes.grpc_upstreams import FakeUpstreams, GeneratorScript, SwapScript
from tests.redis_server import RedisServer


@dataclass
class Gateway:
    app: GatewayApp
    address: str
    channel: grpc.aio.Channel
    stub: gateway_pb2_grpc.GatewayServiceStub
    redis: RedisServer | None = None


async def stored_jobs(gateway: Gateway) -> int:
    """How many jobs the gateway's store holds, read from the store's own data."""
    store = gateway.app.manager.store
    if isinstance(store, InMemoryJobStore):
        return len(store)
    assert gateway.redis is not None
    with gateway.redis.client() as client:
        return sum(1 for key in client.scan_iter("facegen:job:*") if not key.endswith(b":events"))


GatewayFactory = Callable[..., Awaitable[Gateway]]


@pytest.fixture
async def upstreams() -> AsyncIterator[FakeUpstreams]:
    async with FakeUpstreams(GeneratorScript(steps=3), SwapScript()) as fakes:
        yield fakes


@pytest.fixture(params=["memory", "redis"])
def store_kind(request: pytest.FixtureRequest) -> str:
    """Every gateway test runs with the in-memory job store and with a real Redis."""
    return str(request.param)


@pytest.fixture
async def start_gateway(upstreams: FakeUpstreams, store_kind: str,
                        request: pytest.FixtureRequest) -> AsyncIterator[GatewayFactory]:
    started: list[Gateway] = []
    store: dict[str, Any] = {}
    redis: RedisServer | None = None
    if store_kind == "redis":
        redis = request.getfixturevalue("redis_server")
        with redis.client() as client:
            client.flushall()
        store = {"store": "redis", "redis": RedisSettings(url=redis.url)}

    async def start(**overrides: Any) -> Gateway:
        values: dict[str, Any] = {
            "listen": "127.0.0.1:0",
            "grace_seconds": 0,
            "generator_address": upstreams.generator_address,
            "swapper_address": upstreams.swapper_address,
            "connect_timeout_seconds": 2.0,
            "instance": f"gateway-{len(started)}",
            **store,
        }
        values.update(overrides)
        app = GatewayApp(Settings(**values))
        port = await app.start()
        address = f"127.0.0.1:{port}"
        channel = grpc.aio.insecure_channel(address, options=message_size_options(MAX_MESSAGE_BYTES))
        gateway = Gateway(app, address, channel, gateway_pb2_grpc.GatewayServiceStub(channel), redis)
        started.append(gateway)
        return gateway

    yield start
    for gateway in started:
        await gateway.channel.close()
        await gateway.app.stop()


@pytest.fixture
async def gateway(start_gateway: GatewayFactory) -> Gateway:
    return await start_gateway()
