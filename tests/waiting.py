"""Waiting in tests for something another task, thread or process makes true, without fixed sleeps.

The one polling helper of the test suites: ``until`` in asyncio code, ``until_sync`` in blocking code.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Iterator
from typing import TypeVar

T = TypeVar("T")


async def until(condition: Callable[[], T], within_s: float = 5.0, what: str = "condition",
                every_s: float = 0.002) -> T:
    """Polls ``condition`` until it returns something truthy, and returns that; fails the test after ``within_s``."""
    for _ in _attempts(within_s, what):
        if value := condition():
            return value
        await asyncio.sleep(every_s)
    raise AssertionError("unreachable")


def until_sync(condition: Callable[[], T], within_s: float = 5.0, what: str = "condition",
               every_s: float = 0.01) -> T:
    """``until`` for blocking code (sync tests, other processes): sleeps the thread between polls."""
    for _ in _attempts(within_s, what):
        if value := condition():
            return value
        time.sleep(every_s)
    raise AssertionError("unreachable")


def _attempts(within_s: float, what: str) -> Iterator[None]:
    deadline = time.monotonic() + within_s
    while True:
        yield
        assert time.monotonic() < deadline, f"{what} not reached within {within_s} s"
