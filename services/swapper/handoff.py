"""A producer that reports through a callback, consumed as an async generator that paces it.

The swap core reports its events through a callback (they come from deep
inside the RunPod follow loop); a gRPC streaming handler is an async
generator (``services.common.interceptor`` drives it). ``handed_over``
joins the two without changing what the producer sees: each delivery
returns once the consumer has taken the value and asked for the next one
(the message was sent), a consumer that stops early makes the pending
delivery raise, and a cancelled consumer cancels the producer.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections import deque
from collections.abc import AsyncGenerator, Awaitable, Callable, Coroutine
from typing import Any, TypeVar

from services.swapper.remote import finish

T = TypeVar("T")
Deliver = Callable[[T], Awaitable[None]]


async def handed_over(produce: Callable[[Deliver[T]], Coroutine[Any, Any, None]],
                      gone: Callable[[], BaseException]) -> AsyncGenerator[T, None]:
    """Runs ``produce(deliver)`` in a task and yields each value it delivers, in order.

    When the consumer closes the generator early (the call ended, a write
    failed), pending and later deliveries raise ``gone()`` and the producer
    is awaited to the end of its clean-up; its error is not raised (nobody is
    left to receive it). When the consuming task is cancelled, so is the
    producer (and a delivery it still makes raises ``gone()``). The
    producer's own error ends the iteration with that error.
    """
    loop = asyncio.get_running_loop()
    offers: deque[tuple[T, asyncio.Future[None]]] = deque()
    wake: asyncio.Future[None] = loop.create_future()
    # Set once the consumer has gone: a producer that goes on (one that outlives a cancel, in a
    # shielded clean-up or a library that swallowed it) must not wait for it.
    left = False

    def wake_up() -> None:
        if not wake.done():
            wake.set_result(None)

    async def deliver(value: T) -> None:
        if left:
            raise gone()
        taken: asyncio.Future[None] = loop.create_future()
        offers.append((value, taken))
        wake_up()
        await taken

    producer = asyncio.create_task(produce(deliver))
    producer.add_done_callback(lambda _: wake_up())
    taking: asyncio.Future[None] | None = None
    try:
        while True:
            if offers:
                value, taking = offers.popleft()
                yield value
                if not taking.done():
                    taking.set_result(None)
                taking = None
            elif producer.done():
                producer.result()
                return
            else:
                wake = loop.create_future()
                await wake
    except (GeneratorExit, asyncio.CancelledError) as leaving:
        left = True
        for future in (taking, *(taken for _, taken in offers)):
            if future is not None and not future.done():
                future.set_exception(gone())
        if isinstance(leaving, asyncio.CancelledError):
            producer.cancel()
        with contextlib.suppress(Exception, asyncio.CancelledError):
            await finish(producer)
        raise
