"""A circuit breaker per face-swap endpoint.

After ``failure_threshold`` consecutive failures (connection errors,
timeouts, 5xx) the circuit opens: submits skip the endpoint (and fail over
to the next one) for ``cooldown`` seconds. Then one probe is let through
(half-open); its success closes the circuit, its failure opens it again.
Requests for jobs already running on the endpoint are never blocked: the job
lives there, so polling it is the only way to get its result.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from enum import Enum


class BreakerState(Enum):
    """The three states of a circuit breaker."""

    CLOSED = "closed"
    OPEN = "open"
    HALF_OPEN = "half_open"


class CircuitBreaker:
    """Consecutive-failure circuit breaker with a single half-open probe."""

    def __init__(self, failure_threshold: int = 5, cooldown: float = 30.0,
                 clock: Callable[[], float] = time.monotonic, on_open: Callable[[], None] = lambda: None) -> None:
        self.failure_threshold = failure_threshold
        self.cooldown = cooldown
        self._clock = clock
        # Called each time the circuit opens (a metric counts it).
        self._on_open = on_open
        self._failures = 0
        self._opened_at: float | None = None
        self._probe_started: float | None = None

    @property
    def state(self) -> BreakerState:
        """The current state, taking the cooldown into account."""
        if self._opened_at is None:
            return BreakerState.CLOSED
        if self._clock() - self._opened_at >= self.cooldown:
            return BreakerState.HALF_OPEN
        return BreakerState.OPEN

    @property
    def consecutive_failures(self) -> int:
        """Failures since the last success."""
        return self._failures

    def allow(self) -> bool:
        """True when a new submit may go to this endpoint now.

        In the half-open state only one probe is allowed at a time; a probe
        whose outcome is never recorded (its caller went away) is replaced by
        a new one after another cooldown.
        """
        state = self.state
        if state is BreakerState.CLOSED:
            return True
        if state is BreakerState.OPEN:
            return False
        now = self._clock()
        if self._probe_started is None or now - self._probe_started >= self.cooldown:
            self._probe_started = now
            return True
        return False

    def record_success(self) -> None:
        """A request got a well-formed answer: close the circuit."""
        self._failures = 0
        self._opened_at = None
        self._probe_started = None

    def record_failure(self) -> None:
        """A request failed in a way that says the endpoint is unhealthy."""
        self._failures += 1
        if self._opened_at is not None:
            if self.state is BreakerState.HALF_OPEN:
                # Failing while half-open (the probe or a poll): open again for a full cooldown.
                self._opened_at = self._clock()
                self._probe_started = None
                self._on_open()
        elif self._failures >= self.failure_threshold:
            self._opened_at = self._clock()
            self._on_open()
