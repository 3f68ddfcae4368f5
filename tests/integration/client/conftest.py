"""Real gateway processes (on a real Redis, or each with its in-memory store) in front of the fake upstreams."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path

import grpc
import pytest

from tests.fakes.grpc_upstreams import FakeUpstreams, GeneratorScript, SwapScript
from tests.gateway_process import GatewayProcess
from tests.redis_server import RedisServer

LEASE_SECONDS = 1.0

StartGateways = Callable[..., Awaitable[list[GatewayProcess]]]


@pytest.fixture
async def upstreams() -> AsyncIterator[FakeUpstreams]:
    async with FakeUpstreams(GeneratorScript(steps=3), SwapScript()) as fakes:
        yield fakes


@pytest.fixture
async def gateways(upstreams: FakeUpstreams, request: pytest.FixtureRequest,
                   tmp_path: Path) -> AsyncIterator[StartGateways]:
    """Starts gateway processes: ``await gateways(2)`` on a shared Redis, ``await gateways(1, store="memory")``
    (``credentials``: how the test's channel reaches a gateway that serves TLS)."""
    started: list[GatewayProcess] = []

    async def start(count: int = 1, store: str = "redis", credentials: grpc.ChannelCredentials | None = None,
                    **env: str) -> list[GatewayProcess]:
        settings = {"GENERATOR_ADDRESS": upstreams.generator_address, "SWAPPER_ADDRESS": upstreams.swapper_address,
                    "GATEWAY_STORE": store, "GATEWAY_LEASE_SECONDS": str(LEASE_SECONDS),
                    "GATEWAY_GRACE_SECONDS": "0.5", **env}
        if store == "redis":
            redis: RedisServer = request.getfixturevalue("redis_server")
            if not started:
                with redis.client() as client:
                    client.flushall()
            settings["REDIS_URL"] = redis.url
        made = [GatewayProcess(f"gw-{len(started) + number}", tmp_path, settings, credentials)
                for number in range(count)]
        started.extend(made)
        await asyncio.gather(*(gateway.start() for gateway in made))
        return made

    yield start
    for gateway in started:
        await gateway.close()


async def restart(gateway: GatewayProcess) -> None:
    """SIGKILLs the gateway and starts it again on the same address."""
    await gateway.kill()
    if gateway.channel is not None:
        await gateway.channel.close()
    await gateway.start()


def target_of(gateways: list[GatewayProcess]) -> str:
    """One gRPC target naming every gateway (``ipv4:a,b``), as a DNS name with several addresses would."""
    return "ipv4:" + ",".join(gateway.address for gateway in gateways)
