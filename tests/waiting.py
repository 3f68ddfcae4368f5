"""Waiting in tests for something another task or thread makes true, without fixed sleeps."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable


async def until(condition: Callable[[], bool], within_s: float = 5.0, what: str = "condition") -> None:
    """Polls ``condition`` until true; fails the test after ``within_s``."""
    deadline = time.monotonic() + within_s
    while True:
        if condition():
            return
        assert time.monotonic() < deadline, f"{what} not reached within {within_s} s"
        await asyncio.sleep(0.002)
