"""Request-rate limits per endpoint, shared by every job in flight.

RunPod documents its limits as "N requests per 10 s" per route (/run 1000,
/status 2000, /cancel 100). A token bucket sized to N would allow N at once
and N more as it refills, i.e. up to 2N in one window; this limiter instead
hands out send times such that no window of ``window`` seconds ever holds
more than ``limit`` requests, while still allowing a burst of ``limit`` at
once. Each caller reserves the earliest slot ``t`` with
``t >= reservation[i - limit] + window``, then sleeps until ``t``: callers are
served in order and never wake each other up for nothing.

With ``REDIS_URL`` set, the reservations of every swapper replica go to one
sorted set per endpoint and route in Redis (``SharedWindowLimiter``), so the
replicas together stay within one budget. The ``limits`` library's moving
window answers only yes or no, so waiting callers would poll and race for
each freed slot; the script here hands each caller its slot in one round
trip, in order.
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
import uuid
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Protocol

import redis.asyncio as aioredis

from services.common import logs
from services.common.redis import REDIS_DOWN
from services.swapper.metrics import SwapperMetrics

log = logging.getLogger(__name__)

# RunPod's documented limits, requests per 10 s.
RUNPOD_LIMITS: dict[str, int] = {"run": 1000, "status": 2000, "cancel": 100}
RUNPOD_WINDOW_S = 10.0


class RateLimitWouldExceedDeadline(Exception):
    """The next free slot comes after the caller's deadline."""

    def __init__(self, route: str, wait: float) -> None:
        super().__init__(f"the {route} rate limit would delay the request by {wait:.1f} s, past the deadline")
        self.route = route
        self.wait = wait


class SlidingWindowLimiter:
    """At most ``limit`` requests in any ``window`` seconds, handed out first come first served.

    Used from one event loop only (no locking needed).
    """

    def __init__(self, limit: int, window: float, clock: Callable[[], float] = time.monotonic) -> None:
        if limit < 1:
            raise ValueError("limit must be at least 1")
        self.limit = limit
        self.window = window
        self._clock = clock
        self._reservations: deque[float] = deque(maxlen=limit)

    def next_slot(self) -> float:
        """The earliest time a request could be sent now (without reserving it)."""
        now = self._clock()
        if len(self._reservations) < self.limit:
            return max(now, self._reservations[-1]) if self._reservations else now
        return max(now, self._reservations[0] + self.window, self._reservations[-1])

    def reserve(self, deadline: float | None = None, route: str = "") -> float:
        """Reserves the next slot and returns its time; raises if it falls after ``deadline``."""
        slot = self.next_slot()
        if deadline is not None and slot > deadline:
            raise RateLimitWouldExceedDeadline(route, slot - self._clock())
        self._reservations.append(slot)
        return slot

    async def acquire(self, deadline: float | None = None, route: str = "") -> float:
        """Waits for a slot; returns how long it waited."""
        slot = self.reserve(deadline, route)
        wait = slot - self._clock()
        if wait > 0:
            await asyncio.sleep(wait)
            return wait
        return 0.0


# The same reservation, atomically, on a sorted set of the reserved send times (Redis's clock, in ms).
# ARGV: limit, window ms, the longest wait the caller accepts in ms (-1: any), a unique member.
# Returns {1, wait ms} for a reserved slot, or {0, wait ms} when that wait is too long (nothing reserved).
_RESERVE = """
local now_parts = redis.call('TIME')
local now = now_parts[1] * 1000 + math.floor(now_parts[2] / 1000)
local limit, window, max_wait = tonumber(ARGV[1]), tonumber(ARGV[2]), tonumber(ARGV[3])
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now - window)
local count = redis.call('ZCARD', KEYS[1])
local slot = now
if count > 0 then
  slot = math.max(slot, tonumber(redis.call('ZRANGE', KEYS[1], -1, -1, 'WITHSCORES')[2]))
end
if count >= limit then
  local oldest = redis.call('ZRANGE', KEYS[1], count - limit, count - limit, 'WITHSCORES')[2]
  slot = math.max(slot, tonumber(oldest) + window)
end
if max_wait >= 0 and slot - now > max_wait then return {0, slot - now} end
redis.call('ZADD', KEYS[1], slot, ARGV[4])
redis.call('PEXPIRE', KEYS[1], slot - now + window)
return {1, slot - now}
"""


class Limiter(Protocol):
    """Something that hands out send times for one route."""

    limit: int
    window: float

    async def acquire(self, deadline: float | None = None, route: str = "") -> float:
        """Waits for a slot; returns how long it waited."""


class SharedWindowLimiter:
    """``SlidingWindowLimiter``'s reservations in Redis, shared by every swapper replica.

    One sorted set per endpoint and route (the endpoint is the hash tag), one
    script call per request, on Redis's clock. While Redis cannot be reached
    the process's own limiter stands in (logged once per outage).
    """

    def __init__(self, redis: aioredis.Redis, key: str, limit: int, window: float,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.key = key
        self.limit = limit
        self.window = window
        self._clock = clock
        self._reserve = redis.register_script(_RESERVE)
        self._local = SlidingWindowLimiter(limit, window, clock)
        self._outage = False

    async def acquire(self, deadline: float | None = None, route: str = "") -> float:
        """Waits for a slot; returns how long it waited."""
        max_wait_ms = -1 if deadline is None else max(0, int((deadline - self._clock()) * 1000))
        try:
            reserved, wait_ms = await self._reserve(
                keys=[self.key], args=[self.limit, int(self.window * 1000), max_wait_ms, uuid.uuid4().hex])
        except REDIS_DOWN as exc:
            if not self._outage:
                self._outage = True
                logs.event(log, "ratelimit.redis_unavailable", logging.WARNING, key=self.key,
                           message=type(exc).__name__, hint="this process limits itself until Redis is back")
            return await self._local.acquire(deadline, route)
        if self._outage:
            self._outage = False
            logs.event(log, "ratelimit.redis_back", key=self.key)
        wait = int(wait_ms) / 1000
        if not reserved:
            raise RateLimitWouldExceedDeadline(route, wait)
        if wait > 0:
            await asyncio.sleep(wait)
        return wait


@dataclass
class EndpointRateLimiter:
    """One limiter per RunPod route class for one endpoint; waits and refusals go to ``metrics``."""

    routes: dict[str, Limiter]
    endpoint: str = ""
    metrics: SwapperMetrics = field(default_factory=SwapperMetrics)

    @classmethod
    def for_runpod(cls, safety: float = 0.8, clock: Callable[[], float] = time.monotonic,
                   limits: dict[str, int] | None = None, window: float = RUNPOD_WINDOW_S,
                   redis: aioredis.Redis | None = None, endpoint: str = "",
                   metrics: SwapperMetrics | None = None) -> EndpointRateLimiter:
        """Limits at ``safety`` times RunPod's documented ones (or ``limits``); shared through ``redis`` if given."""
        table = limits or RUNPOD_LIMITS
        routes: dict[str, Limiter] = {}
        for route, limit in table.items():
            allowed = max(1, math.floor(limit * safety))
            if redis is None:
                routes[route] = SlidingWindowLimiter(allowed, window, clock)
            else:
                key = f"facegen:ratelimit:{{{endpoint}}}:{route}"
                routes[route] = SharedWindowLimiter(redis, key, allowed, window, clock)
        return cls(routes, endpoint, metrics or SwapperMetrics())

    async def acquire(self, route: str, deadline: float | None = None) -> float:
        """Waits for a slot on ``route`` ("run", "status" or "cancel")."""
        try:
            waited = await self.routes[route].acquire(deadline, route)
        except RateLimitWouldExceedDeadline:
            self.metrics.rate_limit_refusals.labels(endpoint=self.endpoint, route=route).inc()
            raise
        self.metrics.rate_limit_wait_seconds.labels(endpoint=self.endpoint, route=route).observe(waited)
        return waited
