"""Per-endpoint state shared by every job in the process: circuit breaker, rate limits, long-polling."""

from __future__ import annotations

import functools
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import redis.asyncio as aioredis

from services.common import logs
from services.swapper.breaker import CircuitBreaker
from services.swapper.metrics import BREAKER_VALUES, SwapperMetrics
from services.swapper.ratelimit import EndpointRateLimiter
from services.swapper.settings import RunPodSettings

log = logging.getLogger(__name__)

# A long-poll that comes back this early with nothing changed counts as "wait ignored".
_EARLY_FRACTION = 0.5
_IGNORED_BEFORE_DISABLING = 2


@dataclass
class Endpoint:
    """One RunPod endpoint id with its breaker, limiter and what we learned about it."""

    id: str
    breaker: CircuitBreaker
    limiter: EndpointRateLimiter
    wait_ms: int
    _early_unchanged: int = field(default=0, repr=False)

    @property
    def long_polls(self) -> bool:
        """True while ``?wait=`` is used on this endpoint's status requests."""
        return self.wait_ms > 0

    def observe_long_poll(self, asked_ms: int, took_s: float, changed: bool) -> None:
        """Learns whether the endpoint honours ``?wait=``.

        An endpoint that ignores it answers at once with nothing changed; after
        two such answers in a row the client stops asking and polls on its
        schedule instead, so an unsupported ``wait`` costs two requests, once.
        """
        if asked_ms <= 0:
            return
        if changed or took_s >= asked_ms / 1000 * _EARLY_FRACTION:
            self._early_unchanged = 0
            return
        self._early_unchanged += 1
        if self._early_unchanged >= _IGNORED_BEFORE_DISABLING and self.wait_ms:
            self.wait_ms = 0
            logs.event(log, "runpod.long_poll_unsupported", logging.WARNING, endpoint=self.id)

    def disable_long_poll(self, why: str) -> None:
        """Stops sending ``?wait=`` (the endpoint refused it)."""
        if self.wait_ms:
            self.wait_ms = 0
            logs.event(log, "runpod.long_poll_disabled", logging.WARNING, endpoint=self.id, why=why)


def _state_value(breaker: CircuitBreaker) -> float:
    return BREAKER_VALUES[breaker.state]


def build_endpoints(settings: RunPodSettings, clock: Callable[[], float] = time.monotonic,
                    redis: aioredis.Redis | None = None, metrics: SwapperMetrics | None = None) -> list[Endpoint]:
    """The configured endpoints in failover order (primary first); rate limits shared through ``redis``.

    Each breaker's state is a gauge read when metrics are collected; each time it opens is counted.
    """
    metrics = metrics or SwapperMetrics()
    endpoints = []
    for endpoint_id in settings.endpoints:
        opened = metrics.breaker_opened.labels(endpoint=endpoint_id)
        breaker = CircuitBreaker(settings.breaker_failures, settings.breaker_cooldown_s, clock, on_open=opened.inc)
        metrics.breaker_state.labels(endpoint=endpoint_id).set_function(functools.partial(_state_value, breaker))
        endpoints.append(Endpoint(
            id=endpoint_id, breaker=breaker, wait_ms=settings.status_wait_ms,
            limiter=EndpointRateLimiter.for_runpod(settings.rate_safety, clock, redis=redis, endpoint=endpoint_id,
                                                   metrics=metrics)))
    return endpoints
