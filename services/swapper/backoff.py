"""Jittered exponential backoff and the ``Retry-After`` header."""

from __future__ import annotations

import random
from dataclasses import dataclass
from email.utils import parsedate_to_datetime


@dataclass(frozen=True)
class Backoff:
    """Delays that double from ``base`` up to ``cap``, with "equal jitter".

    Half of each delay is fixed and half is random, so retries from many jobs
    that failed together spread out, yet no retry comes back at once.
    """

    base: float = 0.2
    factor: float = 2.0
    cap: float = 5.0

    def ceiling(self, attempt: int) -> float:
        """The largest delay before retry number ``attempt`` (0-based)."""
        return min(self.cap, self.base * self.factor ** max(0, attempt))

    def delay(self, attempt: int, rng: random.Random | None = None) -> float:
        """A delay in [ceiling/2, ceiling] before retry number ``attempt``."""
        ceiling = self.ceiling(attempt)
        return ceiling / 2 + (rng or random).uniform(0, ceiling / 2)


def parse_retry_after(value: str | None, now_epoch: float, cap: float = 300.0) -> float | None:
    """Seconds to wait from a ``Retry-After`` header (delta-seconds or an HTTP date).

    None when the header is absent or malformed; never negative; at most ``cap``.
    """
    if value is None:
        return None
    text = value.strip()
    if not text:
        return None
    try:
        seconds = float(text)
    except ValueError:
        try:
            when = parsedate_to_datetime(text)
        except (TypeError, ValueError, IndexError):
            return None
        if when is None:
            return None
        seconds = when.timestamp() - now_epoch
    if seconds != seconds:  # NaN
        return None
    return max(0.0, min(cap, seconds))
