"""When to try a call again, and when to stop: jittered backoff within an outage budget and a deadline.

gRPC's own retries (a channel's service config) cannot serve here: they stop
at the first response message, so a stream that broke after some events is
never retried, and they allow at most five attempts with no notion of an
outage lasting a given time. Every call the client makes is safe to repeat
(Submit carries an idempotency key, Watch a sequence number, the others only
read or cancel), so one loop handles them all.
"""

from __future__ import annotations

import logging
import random
import time
from collections.abc import Callable
from dataclasses import dataclass

import grpc

from services.client.errors import GatewayError, status_of

log = logging.getLogger(__name__)

# A gateway that stopped, restarted or drained, a connection that was reset,
# or a job store briefly down: the call may be repeated as it was.
RETRYABLE = frozenset({grpc.StatusCode.UNAVAILABLE})


@dataclass(frozen=True)
class RetryPolicy:
    """How long and how often the client re-tries a call or re-attaches to a job.

    ``give_up_after`` is the outage budget: the longest time from the first
    failure of an outage until a call succeeds (or a stream delivers an event)
    again; then the last error is raised. The delay before attempt ``n``
    (0-based) is drawn uniformly from ``[0, min(max_backoff, initial_backoff *
    multiplier**n)]`` ("full jitter": many clients that lost the same gateway do
    not all come back at once). ``call_timeout`` bounds each unary attempt.
    """

    initial_backoff: float = 0.1
    max_backoff: float = 2.0
    multiplier: float = 2.0
    give_up_after: float = 30.0
    call_timeout: float = 30.0

    def __post_init__(self) -> None:
        if not 0 < self.initial_backoff <= self.max_backoff:
            raise ValueError("RetryPolicy needs 0 < initial_backoff <= max_backoff")
        if self.multiplier < 1:
            raise ValueError("RetryPolicy.multiplier must be at least 1")
        if self.give_up_after < 0 or self.call_timeout <= 0:
            raise ValueError("RetryPolicy.give_up_after must be >= 0 and call_timeout > 0")

    def backoff_cap(self, attempt: int) -> float:
        """The largest delay before retry number ``attempt`` (0 for the first retry)."""
        return float(min(self.max_backoff, self.initial_backoff * self.multiplier ** min(attempt, 64)))


class Retrier:
    """Tracks one call's (or one job stream's) failures: backoff, outage budget and the caller's deadline.

    ``deadline`` is an absolute time on ``clock`` (None: no deadline).
    ``succeeded()`` ends an outage: the next failure starts a fresh budget
    and backoff sequence.
    """

    def __init__(self, policy: RetryPolicy, deadline: float | None = None,
                 clock: Callable[[], float] = time.monotonic, rng: Callable[[], float] = random.random) -> None:
        self.policy = policy
        self.deadline = deadline
        self._clock = clock
        self._rng = rng
        self._outage_started: float | None = None
        self._attempts = 0

    @classmethod
    def within(cls, policy: RetryPolicy, timeout: float | None, clock: Callable[[], float] = time.monotonic,
               rng: Callable[[], float] = random.random) -> Retrier:
        """A Retrier whose deadline is ``timeout`` seconds from now (None: none)."""
        return cls(policy, None if timeout is None else clock() + timeout, clock, rng)

    def remaining(self) -> float | None:
        """Seconds left before the caller's deadline (never negative); None without a deadline."""
        return None if self.deadline is None else max(0.0, self.deadline - self._clock())

    @property
    def expired(self) -> bool:
        """True once the caller's deadline has passed."""
        return self.deadline is not None and self._clock() >= self.deadline

    def attempt_timeout(self) -> float:
        """The timeout of one unary attempt: the policy's, cut to the time left."""
        left = self.remaining()
        return self.policy.call_timeout if left is None else min(self.policy.call_timeout, left)

    def succeeded(self) -> None:
        """A call went through or an event arrived: the outage, if any, is over."""
        self._outage_started = None
        self._attempts = 0

    def next_delay(self, code: grpc.StatusCode, details: str, job_id: str | None = None, last_seq: int = 0) -> float:
        """How long to wait before the next attempt after a failure with ``code``.

        Raises GatewayError when the failure is not retryable, when the outage
        budget is spent (with the last error's code), or when the caller's
        deadline has passed (DEADLINE_EXCEEDED).
        """
        if self.expired:
            raise GatewayError(grpc.StatusCode.DEADLINE_EXCEEDED,
                               f"the caller's deadline passed (last error {code.name}: {details})", job_id, last_seq)
        if code not in RETRYABLE:
            raise GatewayError(code, details, job_id, last_seq)
        now = self._clock()
        if self._outage_started is None:
            self._outage_started = now
        spent = now - self._outage_started
        if spent >= self.policy.give_up_after:
            raise GatewayError(code, f"{details} (gave up after {spent:.1f} s and {self._attempts + 1} attempts)",
                               job_id, last_seq)
        delay = self._rng() * self.policy.backoff_cap(self._attempts)
        self._attempts += 1
        left = self.remaining()
        delay = min(delay, self.policy.give_up_after - spent, *(() if left is None else (left,)))
        log.info("event=client.retry job=%s attempt=%d delay_s=%.3f code=%s last_seq=%d details=%s",
                 job_id or "-", self._attempts, delay, code.name, last_seq, details)
        return max(0.0, delay)

    def unary_delay(self, error: grpc.RpcError, job_id: str | None = None) -> float:
        """``next_delay`` for a unary attempt: its own timeout passing is retryable too."""
        code, details = status_of(error)
        if code == grpc.StatusCode.DEADLINE_EXCEEDED and not self.expired:
            code = grpc.StatusCode.UNAVAILABLE
            details = f"no answer within {self.policy.call_timeout:g} s"
        return self.next_delay(code, details, job_id)
