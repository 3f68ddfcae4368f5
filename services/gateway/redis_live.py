"""One Redis pub/sub connection per gateway, fanned out to the Watch streams it serves.

Each event is stored in its job's Stream and published on the job's channel
in one script, so a watcher that subscribes first and then reads the Stream
misses nothing. This connection is subscribed to the channels of the jobs
watched here (counted, unsubscribed when the last watcher leaves) and to the
gateway-wide cancel and wake channels. Pub/sub may drop messages when the
connection breaks: after a reconnection every watcher is told to re-read its
job's Stream from where it is (``RESYNC``), and the claim loop is woken.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Callable
from typing import Any

import redis.asyncio as aioredis

from services.common import logs
from services.common.redis import REDIS_DOWN
from services.gateway.store import StoreUnavailable

log = logging.getLogger(__name__)

# Put in an inbox when its watcher must re-read the Stream (messages may have been lost).
RESYNC = b""
# An inbox past this many unread messages is replaced by one RESYNC (bounded memory per watcher).
INBOX_LIMIT = 256
SUBSCRIBE_TIMEOUT_SECONDS = 2.0


class LiveEvents:
    """The pub/sub side of the Redis job store."""

    def __init__(self, client: aioredis.Redis, system_channels: dict[str, Callable[[bytes], None]]) -> None:
        self._pubsub = client.pubsub()
        self._system = {name.encode(): handler for name, handler in system_channels.items()}
        self._inboxes: dict[bytes, set[asyncio.Queue[bytes]]] = {}
        self._confirmed: dict[bytes, asyncio.Event] = {}
        self._lock = asyncio.Lock()
        self._reader: asyncio.Task[None] | None = None
        self.connected = False

    def start(self) -> None:
        """Starts reading (and connecting, and reconnecting after every failure)."""
        self._reader = asyncio.create_task(self._read(), name="redis-live")

    async def close(self) -> None:
        """Stops reading and disconnects."""
        if self._reader is not None:
            self._reader.cancel()
            await asyncio.gather(self._reader, return_exceptions=True)
        with contextlib.suppress(*REDIS_DOWN):
            await self._pubsub.aclose()

    @contextlib.asynccontextmanager
    async def listen(self, channel: str) -> AsyncIterator[asyncio.Queue[bytes]]:
        """An inbox of the messages published on ``channel`` from now on (subscription confirmed)."""
        name = channel.encode()
        inbox: asyncio.Queue[bytes] = asyncio.Queue()
        async with self._lock:
            listeners = self._inboxes.setdefault(name, set())
            listeners.add(inbox)
            if len(listeners) == 1:
                self._confirmed[name] = confirmed = asyncio.Event()
                try:
                    await self._pubsub.subscribe(name)
                    async with asyncio.timeout(SUBSCRIBE_TIMEOUT_SECONDS):
                        await confirmed.wait()
                except (*REDIS_DOWN, TimeoutError) as exc:
                    self._inboxes.pop(name, None)
                    raise StoreUnavailable(f"cannot subscribe to job events: {exc}") from None
            else:
                await self._confirmed[name].wait()
        try:
            yield inbox
        finally:
            async with self._lock:
                listeners.discard(inbox)
                if not listeners and self._inboxes.get(name) is listeners:
                    del self._inboxes[name]
                    self._confirmed.pop(name, None)
                    with contextlib.suppress(*REDIS_DOWN):
                        await self._pubsub.unsubscribe(name)

    async def _read(self) -> None:
        failures = 0
        while True:
            try:
                if not self.connected:
                    await self._pubsub.subscribe(*self._system)
                message = await self._pubsub.get_message(timeout=1.0)
            except REDIS_DOWN as exc:
                if self.connected or failures == 0:
                    logs.event(log, "store.live_lost", logging.WARNING, error=exc)
                self.connected = False
                failures += 1
                await asyncio.sleep(min(0.1 * 2 ** min(failures, 5), 2.0))
                continue
            if not self.connected:
                self.connected = True
                if failures:
                    logs.event(log, "store.live_restored", after_failures=failures)
                failures = 0
                self._resync_all()
            if message is not None:
                self._dispatch(message)

    def _dispatch(self, message: dict[str, Any]) -> None:
        kind, channel, data = message["type"], message["channel"], message["data"]
        if kind == "subscribe":
            confirmed = self._confirmed.get(channel)
            if confirmed is not None:
                confirmed.set()
            return
        if kind != "message":
            return
        handler = self._system.get(channel)
        if handler is not None:
            handler(data)
            return
        for inbox in self._inboxes.get(channel, ()):
            if inbox.qsize() >= INBOX_LIMIT:
                _replace_with_resync(inbox)
            else:
                inbox.put_nowait(data)

    def _resync_all(self) -> None:
        for listeners in self._inboxes.values():
            for inbox in listeners:
                inbox.put_nowait(RESYNC)
        for handler in self._system.values():
            handler(RESYNC)


def _replace_with_resync(inbox: asyncio.Queue[bytes]) -> None:
    while not inbox.empty():
        inbox.get_nowait()
    inbox.put_nowait(RESYNC)
