"""The per-endpoint request-rate limiter."""

from __future__ import annotations

import asyncio
import time

import pytest

from services.swapper.ratelimit import (
    RUNPOD_LIMITS,
    EndpointRateLimiter,
    RateLimitWouldExceedDeadline,
    SlidingWindowLimiter,
)

pytestmark = pytest.mark.unit


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def max_in_any_window(times: list[float], window: float) -> int:
    times = sorted(times)
    best = 0
    start = 0
    for end, moment in enumerate(times):
        while moment - times[start] >= window:
            start += 1
        best = max(best, end - start + 1)
    return best


def test_a_full_burst_goes_at_once_then_slots_wait_for_the_window() -> None:
    clock = Clock()
    limiter = SlidingWindowLimiter(limit=5, window=10, clock=clock)
    slots = [limiter.reserve() for _ in range(12)]
    assert slots[:5] == [0, 0, 0, 0, 0]
    assert slots[5:10] == [10, 10, 10, 10, 10]
    assert slots[10:] == [20, 20]


def test_no_window_ever_holds_more_than_the_limit_under_arbitrary_arrivals() -> None:
    clock = Clock()
    limiter = SlidingWindowLimiter(limit=7, window=1.0, clock=clock)
    slots = []
    for step in range(400):
        clock.now = step * 0.013 + (0.5 if step % 37 == 0 else 0)
        slots.append(limiter.reserve())
    assert max_in_any_window(slots, 1.0) <= 7
    assert slots == sorted(slots), "first come, first served"


def test_reservation_past_the_deadline_is_refused_without_taking_a_slot() -> None:
    clock = Clock()
    limiter = SlidingWindowLimiter(limit=1, window=10, clock=clock)
    limiter.reserve()
    with pytest.raises(RateLimitWouldExceedDeadline):
        limiter.reserve(deadline=5)
    assert limiter.reserve(deadline=10) == 10


def test_runpod_limits_with_safety_factor() -> None:
    limiter = EndpointRateLimiter.for_runpod(safety=0.8)
    assert {route: lim.limit for route, lim in limiter.routes.items()} == {
        "run": 800, "status": 1600, "cancel": 80}
    assert RUNPOD_LIMITS == {"run": 1000, "status": 2000, "cancel": 100}
    assert all(lim.window == 10.0 for lim in limiter.routes.values())


async def test_concurrent_acquirers_share_one_limit_in_real_time() -> None:
    limiter = EndpointRateLimiter.for_runpod(safety=1.0, limits={"status": 4}, window=0.2)
    sent: list[float] = []

    async def request() -> None:
        await limiter.acquire("status")
        sent.append(time.monotonic())

    started = time.monotonic()
    await asyncio.gather(*(request() for _ in range(12)))
    assert max_in_any_window(sent, 0.2 - 0.005) <= 4
    assert time.monotonic() - started >= 0.38, "12 requests at 4 per 0.2 s need two full windows"
