"""The RunPod rate limit shared by swapper replicas through a real redis-server."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import redis.asyncio as aioredis

from facegen.v1 import common_pb2
from services.common.redis import RedisSettings, connect
from services.stack.runpod_emulator import JobPlan
from services.swapper.ratelimit import EndpointRateLimiter, RateLimitWouldExceedDeadline
from tests.integration.swapper.harness import PRIMARY, MakeSwapper, result_of
from tests.redis_server import RedisServer
from tests.unit.swapper.test_ratelimit import max_in_any_window

pytestmark = pytest.mark.integration

WINDOW_S = 0.5
LIMIT = 5


@pytest.fixture(autouse=True)
async def close_clients() -> AsyncIterator[None]:
    yield
    for client in CLIENTS:
        await client.aclose()
    CLIENTS.clear()


CLIENTS: list[aioredis.Redis] = []


def limiter(redis_url: str | None) -> EndpointRateLimiter:
    """What one replica builds for endpoint ``ep``: its own Redis client, or none."""
    client = None
    if redis_url:
        client = connect(RedisSettings(url=redis_url), "test")
        CLIENTS.append(client)
    return EndpointRateLimiter.for_runpod(safety=1.0, limits={"status": LIMIT}, window=WINDOW_S,
                                          redis=client, endpoint="ep")


async def send_times(replicas: list[EndpointRateLimiter], per_replica: int) -> list[float]:
    sent: list[float] = []

    async def request(replica: EndpointRateLimiter) -> None:
        await replica.acquire("status")
        sent.append(time.monotonic())

    await asyncio.gather(*(request(replica) for replica in replicas for _ in range(per_replica)))
    return sent


async def test_two_replicas_on_one_redis_respect_one_budget(redis_url: str) -> None:
    replicas = [limiter(redis_url), limiter(redis_url)]
    started = time.monotonic()
    sent = await send_times(replicas, 8)
    # Redis's clock and ours tick apart by a little: allow 20 ms of skew at the window's edges.
    assert max_in_any_window(sent, WINDOW_S - 0.02) <= LIMIT
    assert time.monotonic() - started >= 3 * WINDOW_S - 0.05, "16 requests at 5 per window need 3 more windows"


async def test_without_redis_each_replica_has_its_own_budget() -> None:
    sent = await send_times([limiter(None), limiter(None)], LIMIT)
    assert max_in_any_window(sent, WINDOW_S - 0.02) == 2 * LIMIT, "what sharing the budget prevents"


async def test_a_slot_past_the_deadline_is_refused_and_not_taken(redis_url: str) -> None:
    first, second = limiter(redis_url), limiter(redis_url)
    for _ in range(LIMIT):
        await first.acquire("status")
    with pytest.raises(RateLimitWouldExceedDeadline):
        await second.acquire("status", time.monotonic() + WINDOW_S / 4)
    assert await second.acquire("status", time.monotonic() + 2 * WINDOW_S) > 0, "the refused slot is still free"


async def test_redis_down_falls_back_to_the_process_budget(tmp_path: Path) -> None:
    with RedisServer(tmp_path, appendonly=False) as server:
        replica = limiter(server.url)
        await replica.acquire("status")
    started = time.monotonic()
    sent = await send_times([replica], LIMIT + 1)
    assert time.monotonic() - started >= WINDOW_S - 0.05, "still limited, by the process's own window"
    assert max_in_any_window(sent, WINDOW_S - 0.02) <= LIMIT


async def test_two_swapper_replicas_send_no_more_runs_than_one_budget(make_swapper: MakeSwapper,
                                                                     redis_url: str) -> None:
    # A safety factor of 0.01 leaves 10 /run per 10 s (RunPod allows 1000): 12 swaps cannot all go.
    replicas = [await make_swapper(REDIS_URL=redis_url, FACE_SWAP_RATE_SAFETY="0.01") for _ in range(2)]
    replicas[0].fake.endpoint(PRIMARY).plan = JobPlan(run_s=0.05, fetch_inputs=False)
    reference = await replicas[0].put_reference()
    outcomes = await asyncio.gather(*(replica.swap(replica.request(reference, deadline_ms=3000))
                                      for replica in replicas for _ in range(6)))
    results = [result_of(events) for events in outcomes]
    assert replicas[0].fake.count("run") == 10
    refused = [r for r in results if r.fallback_reason == common_pb2.FALLBACK_REASON_RATE_LIMITED]
    assert len(refused) == 2 and all("run rate limit" in r.fallback_message for r in refused)
