"""Object I/O in the bucket: the blocking S3 calls, and their async face with reference deduplication.

Content-Type always comes from the bytes. Results are returned as presigned
GET URLs, or under ``S3_PUBLIC_BASE_URL`` when one is set. Bucket setup is in
``bucket.py``; the batched deletes of temporary objects in ``deleter.py``.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
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
from services.swapper.s3 import S3Bucket, error_code

log = logging.getLogger(__name__)

T = TypeVar("T")

_MAX_CACHED_URLS = 10_000
# A reference known to exist is trusted this long before asking the store again.
_KNOWN_REFERENCE_TTL_S = 600.0


@dataclass(frozen=True)
class ObjectInfo:
    """What a HEAD request says about an object."""

    size: int
    last_modified: datetime | None
    content_type: str


class Storage:
    """Blocking object calls (run them in a thread); the client is thread-safe. Each request is timed
    by operation (``facegen_swapper_storage_operation_duration_seconds``)."""

    def __init__(self, s3: S3Bucket, metrics: SwapperMetrics | None = None) -> None:
        self.s3 = s3
        self.settings = s3.settings
        self.bucket = s3.bucket
        self.endpoint_url = s3.endpoint_url
        self.client = s3.client
        self.metrics = metrics or SwapperMetrics()

    @contextmanager
    def _timed(self, operation: str) -> Iterator[None]:
        started = time.perf_counter()
        try:
            yield
        except BaseException:
            self.metrics.storage_errors.labels(operation=operation).inc()
            raise
        finally:
            self.metrics.storage_seconds.labels(operation=operation).observe(time.perf_counter() - started)

    def put(self, key: str, data: bytes, content_type: str) -> None:
        """Uploads ``data`` under ``key``."""
        try:
            with self._timed("put_object"):
                self.client.put_object(Bucket=self.bucket, Key=key, Body=data, ContentType=content_type)
        except (ClientError, BotoCoreError) as exc:
            raise self.s3.fail(exc, "store an image") from None

    def head(self, key: str) -> ObjectInfo | None:
        """The object's size and age, or None when it does not exist."""
        with self._timed("head_object"):
            answer = self._unless_missing("look up an object",
                                          lambda: self.client.head_object(Bucket=self.bucket, Key=key))
        if answer is None:
            return None
        return ObjectInfo(size=int(answer.get("ContentLength", 0)), last_modified=answer.get("LastModified"),
                          content_type=str(answer.get("ContentType", "")))

    def get(self, key: str) -> bytes | None:
        """An object's bytes, or None when it does not exist."""
        with self._timed("get_object"):
            return self._unless_missing(
                "read an object", lambda: bytes(self.client.get_object(Bucket=self.bucket, Key=key)["Body"].read()))

    def _unless_missing(self, action: str, call: Callable[[], T]) -> T | None:
        """``call()``, or None when the object does not exist; StorageUnavailable for any other failure."""
        try:
            return call()
        except ClientError as exc:
            if error_code(exc) in ("404", "NoSuchKey", "NotFound"):
                return None
            raise self.s3.fail(exc, action) from None
        except BotoCoreError as exc:
            raise self.s3.fail(exc, action) from None

    def delete_many(self, keys: list[str]) -> list[str]:
        """Deletes up to 1000 keys in one request; returns the keys that could not be deleted."""
        try:
            with self._timed("delete_objects"):
                answer = self.client.delete_objects(
                    Bucket=self.bucket, Delete={"Objects": [{"Key": key} for key in keys], "Quiet": True})
        except (ClientError, BotoCoreError) as exc:
            self.s3.fail(exc, "delete temporary objects")
            return list(keys)
        return [str(error.get("Key")) for error in answer.get("Errors", [])]

    def put_and_presign(self, key: str, data: bytes, content_type: str, expiry_s: int) -> str:
        """Uploads ``data`` and returns a presigned GET URL for it (one thread hop for both)."""
        self.put(key, data, content_type)
        return self.presign(key, expiry_s)

    def put_result(self, key: str, data: bytes, content_type: str) -> str:
        """Uploads a result and returns the URL for the caller."""
        self.put(key, data, content_type)
        return self.url_for_result(key)

    def presign(self, key: str, expiry_s: int) -> str:
        """A presigned GET URL (computed locally, no request)."""
        url: str = self.client.generate_presigned_url(
            "get_object", Params={"Bucket": self.bucket, "Key": key}, ExpiresIn=expiry_s)
        return url

    def url_for_result(self, key: str) -> str:
        """The public URL when a public base is set, else a presigned GET URL."""
        if self.settings.public_base_url:
            return f"{self.settings.public_base_url}/{key}"
        return self.presign(key, self.settings.presign_expiry_s)


class ObjectStore:
    """The async face of ``Storage``: runs its calls in a pool, deduplicates references, batches deletes."""

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
            info = await self.pool.run(self.storage.head, key)
            fresh = info is not None and self._age_s(info) < self._refresh_after_s()
            if not fresh:
                await self.pool.run(self.storage.put, key, data, mime)
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
        info = await self.pool.run(self.storage.head, key)
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
        return await self.pool.run(self.storage.put_and_presign, key, data, content_type,
                                   self.storage.settings.temp_presign_expiry_s)

    async def temp_url(self, key: str) -> str:
        """A short-lived GET URL for a stored swap input."""
        return await self.pool.run(self.storage.presign, key, self.storage.settings.temp_presign_expiry_s)

    async def get(self, key: str) -> bytes | None:
        """An object's bytes, or None when it does not exist."""
        return await self.pool.run(self.storage.get, key)

    async def put_result(self, key: str, data: bytes, content_type: str) -> str:
        """Uploads a result; returns the URL handed back to the caller."""
        return await self.pool.run(self.storage.put_result, key, data, content_type)

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
        url = await self.pool.run(self.storage.presign, key, expiry)
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
