"""handed_over: a callback producer consumed as an async generator, paced by its consumer."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable

import pytest

from services.swapper.handoff import Deliver, handed_over
from tests.waiting import until

pytestmark = pytest.mark.unit


class Gone(Exception):
    pass


async def test_values_come_in_order_and_each_delivery_waits_for_the_consumer() -> None:
    delivered: list[int] = []

    async def produce(deliver: Deliver[int]) -> None:
        for value in range(3):
            await deliver(value)
            delivered.append(value)

    events = handed_over(produce, Gone)
    assert await anext(events) == 0
    for _ in range(20):  # loop turns: every chance for the producer to run ahead (it must not)
        await asyncio.sleep(0)
    assert delivered == [], "the first delivery returns only when the consumer asks for the next value"
    assert [value async for value in events] == [1, 2]
    assert delivered == [0, 1, 2]


async def test_the_producer_error_ends_the_iteration_with_it() -> None:
    async def produce(deliver: Deliver[str]) -> None:
        await deliver("first")
        raise ValueError("bad request")

    received: list[str] = []
    with pytest.raises(ValueError, match="bad request"):
        async for value in handed_over(produce, Gone):
            received.append(value)
    assert received == ["first"]


async def test_a_consumer_that_leaves_makes_the_pending_delivery_raise_and_waits_for_the_clean_up() -> None:
    seen: list[str] = []

    async def produce(deliver: Deliver[int]) -> None:
        try:
            await deliver(1)
            await deliver(2)
        except Gone:
            seen.append("gone")
            await asyncio.sleep(0.01)  # a clean-up that takes a moment (it is waited for)
            seen.append("cleaned up")
            raise

    async with contextlib.aclosing(handed_over(produce, Gone)) as events:
        assert await anext(events) == 1
    assert seen == ["gone", "cleaned up"], "aclose returns after the producer's clean-up, not before"


async def consume_all(produce: Callable[[Deliver[int]], Awaitable[None]]) -> None:
    """Reads every value ``produce`` hands over (until cancelled)."""
    async with contextlib.aclosing(handed_over(produce, Gone)) as events:
        async for _ in events:
            pass


async def test_a_cancelled_consumer_cancels_the_producer() -> None:
    started = asyncio.Event()
    outcome: list[str] = []

    async def produce(deliver: Deliver[int]) -> None:
        started.set()
        try:
            await asyncio.Event().wait()
        except asyncio.CancelledError:
            outcome.append("cancelled")
            raise

    consumer = asyncio.create_task(consume_all(produce))
    await asyncio.wait_for(started.wait(), 5)
    consumer.cancel()
    with pytest.raises(asyncio.CancelledError):
        await consumer
    await until(lambda: outcome == ["cancelled"], 5, "the producer cancelled")


async def test_the_producer_runs_in_the_consumer_s_context() -> None:
    import contextvars

    job: contextvars.ContextVar[str] = contextvars.ContextVar("job", default="-")

    async def produce(deliver: Deliver[str]) -> None:
        await deliver(job.get())

    job.set("job-7")
    assert [value async for value in handed_over(produce, Gone)] == ["job-7"]


async def test_a_producer_that_outlives_the_cancel_is_told_the_consumer_is_gone_instead_of_waiting() -> None:
    """A clean-up shielded from the cancel, or a library that swallows it, may go on and deliver
    again; that delivery must fail at once, or the producer (and the call) would wait forever."""
    started = asyncio.Event()
    outcome: list[str] = []

    async def produce(deliver: Deliver[int]) -> None:
        started.set()
        try:
            await asyncio.Event().wait()
        except asyncio.CancelledError:
            outcome.append("cancel swallowed")
        try:
            await deliver(2)
        except Gone:
            outcome.append("told: gone")

    consumer = asyncio.create_task(consume_all(produce))
    await asyncio.wait_for(started.wait(), 5)
    consumer.cancel()
    done, _ = await asyncio.wait({consumer}, timeout=5)
    assert consumer in done, f"the consumer still waits for its producer ({outcome})"
    assert consumer.cancelled()
    assert outcome == ["cancel swallowed", "told: gone"]
