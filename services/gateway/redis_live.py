"""Live job events for the Watch streams a gateway serves: from its own writes, or from Redis pub/sub.

Each event is stored in its job's Stream and published on the job's channel
in one script, so a watcher that subscribes first and then reads the Stream
misses nothing. Watchers of a job that this gateway runs get each event from
the gateway's own writer as soon as Redis has stored it, without a round trip
through pub/sub; watchers of a job run elsewhere get it from a subscription
to the job's channel (counted, dropped when the last watcher leaves). When a
job moves (claimed here, or handed over or lost), its watchers switch source
and re-read the Stream, and seq numbers make any overlap harmless.

The one pub/sub connection also carries the gateway-wide cancel and wake
channels. Pub/sub may drop messages when the connection breaks: after a
reconnection every remote watcher is told to re-read its job's Stream from
where it is (``RESYNC``), and the claim loop is woken.
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


class _Watchers:
    """The watchers of one job on this gateway, and where their events come from."""

    def __init__(self, local: bool) -> None:
        self.inboxes: set[asyncio.Queue[bytes]] = set()
        self.local = local
        self.subscribed = False

    def put(self, data: bytes) -> None:
        for inbox in self.inboxes:
            if inbox.qsize() >= INBOX_LIMIT:
                while not inbox.empty():
                    inbox.get_nowait()
                inbox.put_nowait(RESYNC)
            else:
                inbox.put_nowait(data)


class LiveEvents:
    """The live side of the Redis job store."""

    def __init__(self, client: aioredis.Redis, system_channels: dict[str, Callable[[bytes], None]]) -> None:
        self._pubsub = client.pubsub()
        self._system = {name.encode(): handler for name, handler in system_channels.items()}
        self._jobs: dict[bytes, _Watchers] = {}
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
    async def listen(self, channel: str, local: bool) -> AsyncIterator[asyncio.Queue[bytes]]:
        """An inbox of the job's events from now on; ``local``: this gateway runs the job."""
        name = channel.encode()
        inbox: asyncio.Queue[bytes] = asyncio.Queue()
        async with self._lock:
            watchers = self._jobs.get(name)
            if watchers is None:
                watchers = self._jobs[name] = _Watchers(local)
                if not local:
                    try:
                        await self._subscribe(name, watchers)
                    except StoreUnavailable:
                        del self._jobs[name]
                        raise
            watchers.inboxes.add(inbox)
        try:
            yield inbox
        finally:
            async with self._lock:
                watchers.inboxes.discard(inbox)
                if not watchers.inboxes and self._jobs.get(name) is watchers:
                    del self._jobs[name]
                    if watchers.subscribed:
                        await self._unsubscribe(name, watchers)

    def deliver(self, channel: str, data: bytes) -> None:
        """An event of a job run here, just stored, for its watchers on this gateway."""
        watchers = self._jobs.get(channel.encode())
        if watchers is not None and watchers.local:
            watchers.put(data)

    async def run_here(self, channel: str) -> None:
        """The job is now run by this gateway: its watchers get its events from ``deliver``."""
        async with self._lock:
            watchers = self._jobs.get(channel.encode())
            if watchers is None or watchers.local:
                return
            watchers.local = True
            if watchers.subscribed:
                await self._unsubscribe(channel.encode(), watchers)

    async def run_elsewhere(self, channel: str) -> None:
        """The job left this gateway: its watchers follow it through Redis from where they are."""
        async with self._lock:
            name = channel.encode()
            watchers = self._jobs.get(name)
            if watchers is None or not watchers.local:
                return
            watchers.local = False
            with contextlib.suppress(StoreUnavailable):
                await self._subscribe(name, watchers)
            watchers.put(RESYNC)

    async def _subscribe(self, name: bytes, watchers: _Watchers) -> None:
        self._confirmed[name] = confirmed = asyncio.Event()
        try:
            await self._pubsub.subscribe(name)
            async with asyncio.timeout(SUBSCRIBE_TIMEOUT_SECONDS):
                await confirmed.wait()
        except (*REDIS_DOWN, TimeoutError) as exc:
            raise StoreUnavailable(f"cannot subscribe to job events: {exc}") from None
        finally:
            self._confirmed.pop(name, None)
        watchers.subscribed = True

    async def _unsubscribe(self, name: bytes, watchers: _Watchers) -> None:
        watchers.subscribed = False
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
        watchers = self._jobs.get(channel)
        # A job run here is delivered by its writer; a late message from before it moved is not needed.
        if watchers is not None and not watchers.local:
            watchers.put(data)

    def _resync_all(self) -> None:
        for watchers in self._jobs.values():
            if not watchers.local:
                watchers.put(RESYNC)
        for handler in self._system.values():
            handler(RESYNC)
