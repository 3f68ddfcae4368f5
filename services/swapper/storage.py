"""Object I/O in the bucket: PUT, GET and HEAD on the event loop, batched deletes, reference deduplication.

The images go through ``objects.py`` (aiohttp, signed by botocore); the
deletes of temporary objects are batched (``deleter.py``) into boto3
``DeleteObjects`` calls in a thread. Content-Type always comes from the
bytes. Results are returned as presigned GET URLs, or under
``S3_PUBLIC_BASE_URL`` when one is set. Bucket setup is in ``bucket.py``.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import TypeVar

from botocore.exceptions import BotoCoreError, ClientError

from services.common import logs
from services.common.errors import NotFound
from services.swapper.blocking import BlockingPool
from services.swapper.deleter import BatchDeleter
from services.swapper.keys import reference_key
from services.swapper.metrics import SwapperMetrics
from services.swapper.objects import ObjectClient, last_modified
from services.swapper.s3 import S3Bucket, error_code

log = logging.getLogger(__name__)

T = TypeVar("T")

_MAX_CACHED_URLS = 10_000
# A reference known to exist is trusted this long before asking the store again.
_KNOWN_REFERENCE_TTL_S = 600.0
_MISSING = frozenset({"404", "NoSuchKey", "NotFound"})


@dataclass(frozen=True)
class ObjectInfo:
    """What a HEAD request says about an object."""

    size: int
    last_modified: datetime | None
    content_type: str


class Storage:
    """The bucket's objects: ``put``, ``get`` and ``head`` are coroutines (``objects.py``), ``delete_many`` is
    blocking (boto3: run it in a thread). Each request is timed by operation
    (``facegen_swapper_storage_operation_duration_seconds``); every failure but a missing object is a
    ``StorageUnavailable`` that says what is wrong."""

    def __init__(self, s3: S3Bucket, objects: ObjectClient, metrics: SwapperMetrics | None = None) -> None:
        self.s3 = s3
        self.objects = objects
        self.settings = s3.settings
        self.bucket = s3.bucket
        self.endpoint_url = s3.endpoint_url
        self.client = s3.client
        self.metrics = metrics or SwapperMetrics()

    @asynccontextmanager
    async def _timed(self, operation: str, action: str) -> AsyncIterator[None]:
        """Times the block; a failure is counted and raised as StorageUnavailable saying it could not ``action``."""
        started = time.perf_counter()
        try:
            yield
        except (ClientError, BotoCoreError) as exc:
            self.metrics.storage_errors.labels(operation=operation).inc()
            raise self.s3.fail(exc, action) from None
        finally:
            self.metrics.storage_seconds.labels(operation=operation).observe(time.perf_counter() - started)

    async def put(self, key: str, data: bytes, content_type: str) -> None:
        """Uploads ``data`` under ``key``."""
        async with self._timed("put_object", "store an image"):
            await self.objects.put(key, data, content_type)

    async def head(self, key: str) -> ObjectInfo | None:
        """The object's size and age, or None when it does not exist."""
        headers = await self._unless_missing("head_object", "look up an object", lambda: self.objects.head(key))
        if headers is None:
            return None
        return ObjectInfo(size=int(headers.get("Content-Length", 0)), last_modified=last_modified(headers),
                          content_type=headers.get("Content-Type", ""))

    async def get(self, key: str) -> bytes | None:
        """An object's bytes, or None when it does not exist."""
        return await self._unless_missing("get_object", "read an object", lambda: self.objects.get(key))

    async def _unless_missing(self, operation: str, action: str, call: Callable[[], Awaitable[T]]) -> T | None:
        """``await call()``, or None when the object does not exist; StorageUnavailable for any other failure."""
        async with self._timed(operation, action):
            try:
                return await call()
            except ClientError as exc:
                if error_code(exc) in _MISSING:
                    return None
                raise

    def delete_many(self, keys: list[str]) -> list[str]:
        """Deletes up to 1000 keys in one request (blocking); returns the keys that could not be deleted."""
        started = time.perf_counter()
        try:
            answer = self.client.delete_objects(
                Bucket=self.bucket, Delete={"Objects": [{"Key": key} for key in keys], "Quiet": True})
        except (ClientError, BotoCoreError) as exc:
            self.metrics.storage_errors.labels(operation="delete_objects").inc()
            self.s3.fail(exc, "delete temporary objects")
            return list(keys)
        finally:
            self.metrics.storage_seconds.labels(operation="delete_objects").observe(time.perf_counter() - started)
        return [str(error.get("Key")) for error in answer.get("Errors", [])]

    def presign(self, key: str, expiry_s: int) -> str:
        """A presigned GET URL (computed locally, no request)."""
        return self.objects.presign(key, expiry_s)

    def url_for_result(self, key: str) -> str:
        """The public URL when a public base is set, else a presigned GET URL."""
        if self.settings.public_base_url:
            return f"{self.settings.public_base_url}/{key}"
        return self.presign(key, self.settings.presign_expiry_s)


class ObjectStore:
    """What a swap asks of storage: references stored once, temporary inputs, results, batched deletes."""

    def __init__(self, storage: Storage, pool: BlockingPool,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.storage = storage
        self.pool = pool
        self._clock = clock
        self._known_refs: dict[str, float] = {}
        self._reference_urls: dict[str, tuple[str, float]] = {}
        self._uploading: dict[str, asyncio.Future[bool]] = {}
        self._deleter = BatchDeleter(pool, storage.delete_many)
        self._hits = storage.metrics.reference_cache_hits
        self._uploads = storage.metrics.reference_uploads

    async def put_reference(self, data: bytes, mime: str) -> tuple[str, bool]:
        """Stores a reference face once; returns its key and whether it was already there.

        Concurrent calls for the same bytes share one upload. A stored copy
        older than half its lifecycle expiry is uploaded again, which
        restarts its expiry clock, so a key handed out now stays valid.
        """
        key = reference_key(data, mime)
        if self._known(key):
            self._hits.inc()
            return key, True
        running = self._uploading.get(key)
        if running is not None:
            await asyncio.shield(running)
            self._hits.inc()
            return key, True
        future: asyncio.Future[bool] = asyncio.get_running_loop().create_future()
        self._uploading[key] = future
        try:
            info = await self.storage.head(key)
            fresh = info is not None and self._age_s(info) < self._refresh_after_s()
            if not fresh:
                await self.storage.put(key, data, mime)
                self._uploads.inc()
            else:
                self._hits.inc()
            self._known_refs[key] = self._clock() + _KNOWN_REFERENCE_TTL_S
            future.set_result(True)
            return key, fresh
        except BaseException as exc:
            future.set_exception(exc)
            future.exception()  # the waiters (if any) get it; do not warn when there are none
            raise
        finally:
            del self._uploading[key]

    async def require_reference(self, key: str) -> None:
        """NotFound when ``key`` is not a stored reference."""
        if self._known(key):
            return
        info = await self.storage.head(key)
        if info is None:
            raise NotFound(f"reference_key {key!r} does not exist in storage (it may have expired); "
                           "upload the face again with PutReference")
        self._known_refs[key] = self._clock() + _KNOWN_REFERENCE_TTL_S

    def start_delete_temp(self, key: str) -> asyncio.Future[bool]:
        """Starts deleting a temporary object (batched with other swaps' deletes).

        The future says True when the store reported a failure (logged here;
        the lifecycle rule will expire the object); it never raises.
        """
        future = self._deleter.delete(key)

        def report(done: asyncio.Future[bool]) -> None:
            if not done.cancelled() and done.result():
                logs.event(log, "storage.delete_failed", logging.WARNING, key=key,
                           hint="the lifecycle rule will expire it")

        future.add_done_callback(report)
        return future

    async def put_temp(self, key: str, data: bytes, content_type: str) -> str:
        """Uploads a swap input; returns a short-lived GET URL for the worker."""
        await self.storage.put(key, data, content_type)
        return self.storage.presign(key, self.storage.settings.temp_presign_expiry_s)

    async def temp_url(self, key: str) -> str:
        """A short-lived GET URL for a stored swap input."""
        return self.storage.presign(key, self.storage.settings.temp_presign_expiry_s)

    async def get(self, key: str) -> bytes | None:
        """An object's bytes, or None when it does not exist."""
        return await self.storage.get(key)

    async def put_result(self, key: str, data: bytes, content_type: str) -> str:
        """Uploads a result; returns the URL handed back to the caller."""
        await self.storage.put(key, data, content_type)
        return self.storage.url_for_result(key)

    async def reference_url(self, key: str, needed_s: float) -> str:
        """A presigned GET URL for a reference that stays valid at least ``needed_s`` more seconds.

        Many swaps of one job (and many jobs of one face) share a reference;
        its URL is signed once and reused while it has enough life left.
        """
        now = self._clock()
        cached = self._reference_urls.get(key)
        if cached is not None and cached[1] - now >= needed_s:
            return cached[0]
        expiry = self.storage.settings.temp_presign_expiry_s
        url = self.storage.presign(key, expiry)
        if len(self._reference_urls) >= _MAX_CACHED_URLS:
            self._reference_urls.clear()
        self._reference_urls[key] = (url, now + expiry)
        return url

    def _known(self, key: str) -> bool:
        until = self._known_refs.get(key)
        if until is None:
            return False
        if until < self._clock():
            del self._known_refs[key]
            return False
        return True

    def _refresh_after_s(self) -> float:
        return self.storage.settings.reference_expiry_days * 86_400 / 2

    @staticmethod
    def _age_s(info: ObjectInfo) -> float:
        if info.last_modified is None:
            return 0.0
        return (datetime.now(UTC) - info.last_modified).total_seconds()
