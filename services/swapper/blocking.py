"""Bounded thread pools for the blocking calls (boto3, Pillow).

Blocking calls never run on the event loop. A ``CallScope`` keeps the calls
one job started, even after the coroutine that started one was cancelled, so
the job can wait for its own leftovers before it reports that it has ended.
Each pool counts its calls in flight on a gauge (the
``facegen_swapper_blocking_calls_in_flight`` metric), which tests read to
check that nothing is left running.
"""

from __future__ import annotations

import asyncio
import contextvars
import functools
from collections.abc import Callable, Iterable
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any, ParamSpec, Protocol, TypeVar

P = ParamSpec("P")
T = TypeVar("T")


class Gauge(Protocol):
    """What a pool needs of its in-flight gauge (a labelled prometheus_client Gauge)."""

    def inc(self, amount: float = 1) -> None:
        """Adds one call."""

    def dec(self, amount: float = 1) -> None:
        """Removes one call."""


class _Uncounted:
    def inc(self, amount: float = 1) -> None:
        pass

    def dec(self, amount: float = 1) -> None:
        pass


class BlockingPool:
    """A named ThreadPoolExecutor that counts calls in flight (on ``in_flight``) and keeps the caller's context."""

    def __init__(self, name: str, max_workers: int, in_flight: Gauge | None = None) -> None:
        self.name = name
        self.max_workers = max_workers
        self._executor = ThreadPoolExecutor(max_workers=max_workers, thread_name_prefix=name)
        self._in_flight = in_flight or _Uncounted()

    def submit(self, fn: Callable[P, T], *args: P.args, **kwargs: P.kwargs) -> Future[T]:
        """Starts ``fn`` in a thread with the caller's contextvars (job id for logs, the current span)."""
        context = contextvars.copy_context()
        call = functools.partial(fn, *args, **kwargs)
        self._in_flight.inc()
        try:
            future = self._executor.submit(context.run, call)
        except BaseException:
            self._done(None)
            raise
        # Runs when the call finished in its thread, or was cancelled before it
        # started, and before any awaiting coroutine is woken.
        future.add_done_callback(self._done)
        return future

    def _done(self, _future: Future[Any] | None) -> None:
        self._in_flight.dec()

    async def run(self, fn: Callable[P, T], *args: P.args, **kwargs: P.kwargs) -> T:
        """Runs ``fn`` in a thread and awaits its result.

        Cancelling the await does not stop a call already running in its
        thread; use a ``CallScope`` to wait for such leftovers.
        """
        return await asyncio.wrap_future(self.submit(fn, *args, **kwargs))

    def shutdown(self, wait: bool = True) -> None:
        """Stops the threads (after the running calls when ``wait``)."""
        self._executor.shutdown(wait=wait, cancel_futures=True)


class CallScope:
    """The blocking calls one job started, so that the job can wait for all of them at its end."""

    def __init__(self) -> None:
        self._futures: set[Future[Any]] = set()

    async def run(self, pool: BlockingPool, fn: Callable[P, T], *args: P.args, **kwargs: P.kwargs) -> T:
        """Like ``pool.run``, remembering the call until it has finished in its thread."""
        future = pool.submit(fn, *args, **kwargs)
        self._futures.add(future)
        future.add_done_callback(self._futures.discard)
        return await asyncio.wrap_future(future)

    @property
    def pending(self) -> int:
        """Calls of this scope still queued or running."""
        return sum(1 for future in self._futures if not future.done())

    async def drain(self, limit_s: float) -> bool:
        """Waits up to ``limit_s`` s for this scope's calls to finish; True when they all did."""
        waiting = [future for future in list(self._futures) if not future.done()]
        if not waiting:
            return True
        for future in waiting:
            future.cancel()  # succeeds only for calls that have not started yet
        _, not_done = await asyncio.wait(_wrap_all(waiting), timeout=limit_s)
        return not not_done


def _wrap_all(futures: Iterable[Future[Any]]) -> list[asyncio.Future[Any]]:
    wrapped = [asyncio.wrap_future(future) for future in futures]
    for item in wrapped:
        # A leftover call's exception was already handled (or deliberately ignored) by its job.
        item.add_done_callback(lambda f: f.cancelled() or f.exception())
    return wrapped
