"""Deletes of temporary objects from concurrent swaps, coalesced into DeleteObjects requests."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable
from typing import Any

from services.swapper.blocking import BlockingPool

_MAX_DELETE_BATCH = 1000  # the S3 DeleteObjects limit
# Deletes wait this long for company before a DeleteObjects request goes out.
_DELETE_LINGER_S = 0.05


class BatchDeleter:
    """Coalesces deletes from concurrent swaps into DeleteObjects requests.

    A delete waits ``linger_s`` for others to join it (a full batch goes at
    once); deletes that arrive while a request is in flight ride on the next
    one. No task runs in the background: the work is chained by a timer and
    completion callbacks, and each caller awaits only its own key's outcome.
    """

    def __init__(self, pool: BlockingPool, delete_many: Callable[[list[str]], list[str]],
                 linger_s: float = _DELETE_LINGER_S) -> None:
        self.pool = pool
        self.delete_many = delete_many
        self.linger_s = linger_s
        self._pending: list[tuple[str, asyncio.Future[bool]]] = []
        self._busy = False
        self._timer: asyncio.TimerHandle | None = None

    def delete(self, key: str) -> asyncio.Future[bool]:
        """Queues ``key`` for deletion; the future is True when the store reported a failure for it."""
        loop = asyncio.get_running_loop()
        future: asyncio.Future[bool] = loop.create_future()
        self._pending.append((key, future))
        if self._busy:
            return future
        if len(self._pending) >= _MAX_DELETE_BATCH:
            self._send(loop)
        elif self._timer is None:
            self._timer = loop.call_later(self.linger_s, self._linger_over, loop)
        return future

    def _linger_over(self, loop: asyncio.AbstractEventLoop) -> None:
        self._timer = None
        if self._pending and not self._busy:
            self._send(loop)

    def _send(self, loop: asyncio.AbstractEventLoop) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        batch = self._pending[:_MAX_DELETE_BATCH]
        del self._pending[:_MAX_DELETE_BATCH]
        self._busy = True
        work = self.pool.submit(self.delete_many, [key for key, _ in batch])

        def finished(done: Any) -> None:
            with contextlib.suppress(RuntimeError):  # a closed loop: nobody is waiting any more
                loop.call_soon_threadsafe(self._finished, loop, batch, done)

        work.add_done_callback(finished)

    def _finished(self, loop: asyncio.AbstractEventLoop, batch: list[tuple[str, asyncio.Future[bool]]],
                  done: Any) -> None:
        self._busy = False
        try:
            failed = set(done.result())
        except BaseException:
            failed = {key for key, _ in batch}
        for key, future in batch:
            if not future.done():
                future.set_result(key in failed)
        if self._pending:
            self._send(loop)
