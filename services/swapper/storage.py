"""Object storage through the S3 API (Cloudflare R2, or any S3-compatible store).

Layout of the bucket:

- ``refs/<sha256>.<ext>``: reference faces, content-addressed (the same face is stored once);
- ``tmp/<job_id>/<index>-<nonce>-target.<ext>``: swap inputs, deleted when the swap ends;
- ``results/<job_id>/<index>-<swapped|original>.<ext>``: what the caller gets back.

A lifecycle rule expires ``tmp/`` and ``refs/`` (and optionally
``results/``) in case a delete is ever missed. Content-Type always comes
from the bytes. Every failure is a ``StorageUnavailable`` whose message says
what is wrong (missing bucket, rejected credentials, unreachable endpoint)
without showing a secret.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import secrets as pysecrets
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import boto3
from botocore.config import Config
from botocore.exceptions import BotoCoreError, ClientError, NoCredentialsError

from services.common import logs
from services.common.errors import NotFound, Unavailable
from services.common.images import EXTENSION_BY_MIME
from services.common.secrets import mask
from services.swapper.blocking import BlockingPool
from services.swapper.settings import StorageSettings

log = logging.getLogger(__name__)

TEMP_PREFIX = "tmp/"
REFS_PREFIX = "refs/"
RESULTS_PREFIX = "results/"
_RULE_IDS = {"facegen-tmp": TEMP_PREFIX, "facegen-refs": REFS_PREFIX, "facegen-results": RESULTS_PREFIX}
_MAX_DELETE_BATCH = 1000  # the S3 DeleteObjects limit
# Deletes wait this long for company before a DeleteObjects request goes out.
_DELETE_LINGER_S = 0.05
_MAX_CACHED_URLS = 10_000
# A reference known to exist is trusted this long before asking the store again.
_KNOWN_REFERENCE_TTL_S = 600.0
# One boto3 session for the process: each new session parses the S3 service model
# again (~0.3 s); client creation from a session is not thread-safe, hence the lock.
_SESSION_LOCK = threading.Lock()
_SESSION: boto3.session.Session | None = None


def _session() -> boto3.session.Session:
    global _SESSION
    if _SESSION is None:
        _SESSION = boto3.session.Session()
    return _SESSION


class StorageUnavailable(Unavailable):
    """The store cannot be used; the message is safe to show callers."""


def reference_key(data: bytes, mime: str) -> str:
    """``refs/<sha256>.<ext>`` for an image's bytes."""
    return f"{REFS_PREFIX}{hashlib.sha256(data).hexdigest()}.{EXTENSION_BY_MIME[mime]}"


def temp_key(job_id: str, index: int, mime: str) -> str:
    """A fresh temporary key for a swap input (a nonce keeps retries of one job apart)."""
    return f"{TEMP_PREFIX}{job_id}/{index}-{pysecrets.token_hex(4)}-target.{EXTENSION_BY_MIME[mime]}"


def result_key(job_id: str, index: int, swapped: bool, mime: str) -> str:
    """``results/<job_id>/<index>-<swapped|original>.<ext>``."""
    kind = "swapped" if swapped else "original"
    return f"{RESULTS_PREFIX}{job_id}/{index}-{kind}.{EXTENSION_BY_MIME[mime]}"


@dataclass(frozen=True)
class ObjectInfo:
    """What a HEAD request says about an object."""

    size: int
    last_modified: datetime | None
    content_type: str


class Storage:
    """Blocking S3 operations (call them from a thread); the client is thread-safe."""

    def __init__(self, settings: StorageSettings, endpoint_url: str, access_key_id: str,
                 secret_access_key: str, pool_size: int = 32) -> None:
        self.settings = settings
        self.bucket = settings.bucket
        self.endpoint_url = endpoint_url
        self._key_id = access_key_id
        with _SESSION_LOCK:
            self.client = self._make_client(endpoint_url, access_key_id, secret_access_key, pool_size)

    def _make_client(self, endpoint_url: str, access_key_id: str, secret_access_key: str,
                     pool_size: int) -> Any:
        settings = self.settings
        return _session().client(
            "s3",
            endpoint_url=endpoint_url,
            aws_access_key_id=access_key_id,
            aws_secret_access_key=secret_access_key,
            region_name=settings.region,
            config=Config(
                signature_version="s3v4",
                s3={"addressing_style": "path"},
                max_pool_connections=pool_size,
                connect_timeout=settings.connect_timeout_s,
                read_timeout=settings.read_timeout_s,
                retries={"max_attempts": settings.max_attempts, "mode": "standard"},
                # Checksums only where the API requires them: some S3-compatible stores
                # reject the CRC headers newer boto3 adds to every upload.
                request_checksum_calculation="when_required",
                response_checksum_validation="when_required",
            ),
        )

    def describe(self, exc: BaseException, action: str) -> str:
        """A caller-safe sentence for a boto3 failure during ``action``."""
        where = f"bucket {self.bucket!r} at {self.endpoint_url}"
        if isinstance(exc, ClientError):
            error = exc.response.get("Error", {})
            code = str(error.get("Code", ""))
            status = exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode", 0)
            if code in ("NoSuchBucket",) or (code in ("404", "NotFound") and action == "check the bucket"):
                return f"cannot {action}: {where} does not exist (create it, or set S3_CREATE_BUCKET=true)"
            if code in ("InvalidAccessKeyId", "SignatureDoesNotMatch", "AccessDenied", "Forbidden",
                        "403", "401", "Unauthorized", "InvalidToken") or status in (401, 403):
                return (f"cannot {action}: the storage credentials (access key {mask(self._key_id)}) were "
                        f"rejected for {where} ({code or status})")
            return f"cannot {action}: {where} answered {code or 'an error'} (HTTP {status})"
        if isinstance(exc, NoCredentialsError):
            return f"cannot {action}: no storage credentials are configured"
        if isinstance(exc, BotoCoreError):
            return f"cannot {action}: {where} cannot be reached ({type(exc).__name__})"
        return f"cannot {action}: {type(exc).__name__}"

    def _fail(self, exc: BaseException, action: str) -> StorageUnavailable:
        message = self.describe(exc, action)
        logs.event(log, "storage.error", logging.WARNING, action=action, message=message)
        return StorageUnavailable(message)

    def ensure_ready(self) -> list[str]:
        """Checks (or creates) the bucket and installs the lifecycle rules; returns notes for the log."""
        notes: list[str] = []
        try:
            self.client.head_bucket(Bucket=self.bucket)
        except ClientError as exc:
            code = str(exc.response.get("Error", {}).get("Code", ""))
            if code in ("404", "NoSuchBucket", "NotFound") and self.settings.create_bucket:
                self._create_bucket()
                notes.append(f"created bucket {self.bucket}")
            else:
                raise self._fail(exc, "check the bucket") from None
        except BotoCoreError as exc:
            raise self._fail(exc, "check the bucket") from None
        if self.settings.manage_lifecycle:
            notes.append(self._ensure_lifecycle())
        return notes

    def _create_bucket(self) -> None:
        kwargs: dict[str, Any] = {"Bucket": self.bucket}
        if self.settings.region not in ("us-east-1", ""):
            kwargs["CreateBucketConfiguration"] = {"LocationConstraint": self.settings.region}
        try:
            self.client.create_bucket(**kwargs)
        except ClientError as exc:
            code = str(exc.response.get("Error", {}).get("Code", ""))
            if code not in ("BucketAlreadyOwnedByYou", "BucketAlreadyExists"):
                raise self._fail(exc, "create the bucket") from None
        except BotoCoreError as exc:
            raise self._fail(exc, "create the bucket") from None

    def wanted_rules(self) -> list[dict[str, Any]]:
        """The lifecycle rules this service manages."""
        days = {"facegen-tmp": self.settings.temp_expiry_days,
                "facegen-refs": self.settings.reference_expiry_days,
                "facegen-results": self.settings.result_expiry_days}
        return [
            {"ID": rule_id, "Filter": {"Prefix": prefix}, "Status": "Enabled",
             "Expiration": {"Days": days[rule_id]},
             "AbortIncompleteMultipartUpload": {"DaysAfterInitiation": 1}}
            for rule_id, prefix in _RULE_IDS.items() if days[rule_id] > 0
        ]

    def _ensure_lifecycle(self) -> str:
        """Adds or updates our rules and keeps everyone else's; a store that refuses is only noted."""
        try:
            try:
                current = self.client.get_bucket_lifecycle_configuration(Bucket=self.bucket).get("Rules", [])
            except ClientError as exc:
                if exc.response.get("Error", {}).get("Code") != "NoSuchLifecycleConfiguration":
                    raise
                current = []
            wanted = self.wanted_rules()
            ours = sorted(_rule_summary(rule) for rule in current if rule.get("ID") in _RULE_IDS)
            if ours == sorted(_rule_summary(rule) for rule in wanted):
                return "lifecycle rules already in place"
            others = [rule for rule in current if rule.get("ID") not in _RULE_IDS]
            rules = others + wanted
            if rules:
                self.client.put_bucket_lifecycle_configuration(
                    Bucket=self.bucket, LifecycleConfiguration={"Rules": rules})
            else:
                self.client.delete_bucket_lifecycle(Bucket=self.bucket)
            return "lifecycle rules installed: " + ", ".join(
                f"{rule['Filter']['Prefix']} after {rule['Expiration']['Days']} d" for rule in wanted)
        except (ClientError, BotoCoreError) as exc:
            message = self.describe(exc, "manage the lifecycle rules")
            logs.event(log, "storage.lifecycle_skipped", logging.WARNING, message=message,
                       hint="set S3_MANAGE_LIFECYCLE=false if another tool manages them")
            return f"lifecycle not managed: {message}"

    def put(self, key: str, data: bytes, content_type: str) -> None:
        """Uploads ``data`` under ``key``."""
        try:
            self.client.put_object(Bucket=self.bucket, Key=key, Body=data, ContentType=content_type)
        except (ClientError, BotoCoreError) as exc:
            raise self._fail(exc, "store an image") from None

    def head(self, key: str) -> ObjectInfo | None:
        """The object's size and age, or None when it does not exist."""
        try:
            answer = self.client.head_object(Bucket=self.bucket, Key=key)
        except ClientError as exc:
            if str(exc.response.get("Error", {}).get("Code")) in ("404", "NoSuchKey", "NotFound"):
                return None
            raise self._fail(exc, "look up an object") from None
        except BotoCoreError as exc:
            raise self._fail(exc, "look up an object") from None
        return ObjectInfo(size=int(answer.get("ContentLength", 0)), last_modified=answer.get("LastModified"),
                          content_type=str(answer.get("ContentType", "")))

    def get(self, key: str) -> bytes:
        """Downloads an object (used by the doctor)."""
        try:
            body: bytes = self.client.get_object(Bucket=self.bucket, Key=key)["Body"].read()
            return body
        except (ClientError, BotoCoreError) as exc:
            raise self._fail(exc, "read an object") from None

    def delete_many(self, keys: list[str]) -> list[str]:
        """Deletes up to 1000 keys in one request; returns the keys that could not be deleted."""
        try:
            answer = self.client.delete_objects(
                Bucket=self.bucket, Delete={"Objects": [{"Key": key} for key in keys], "Quiet": True})
        except (ClientError, BotoCoreError) as exc:
            self._fail(exc, "delete temporary objects")
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


def _rule_summary(rule: dict[str, Any]) -> tuple[str, str, int]:
    prefix = rule.get("Filter", {}).get("Prefix", rule.get("Prefix", ""))
    return str(rule.get("ID")), str(prefix), int(rule.get("Expiration", {}).get("Days", 0))


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
        self.reference_uploads = 0
        self.reference_hits = 0

    async def put_reference(self, data: bytes, mime: str) -> tuple[str, bool]:
        """Stores a reference face once; returns its key and whether it was already there.

        Concurrent calls for the same bytes share one upload. A stored copy
        older than half its lifecycle expiry is uploaded again, which
        restarts its expiry clock, so a key handed out now stays valid.
        """
        key = reference_key(data, mime)
        if self._known(key):
            self.reference_hits += 1
            return key, True
        running = self._uploading.get(key)
        if running is not None:
            await asyncio.shield(running)
            self.reference_hits += 1
            return key, True
        future: asyncio.Future[bool] = asyncio.get_running_loop().create_future()
        self._uploading[key] = future
        try:
            info = await self.pool.run(self.storage.head, key)
            fresh = info is not None and self._age_s(info) < self._refresh_after_s()
            if not fresh:
                await self.pool.run(self.storage.put, key, data, mime)
                self.reference_uploads += 1
            else:
                self.reference_hits += 1
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

    @property
    def delete_requests(self) -> int:
        """DeleteObjects requests sent so far."""
        return self._deleter.requests

    async def put_temp(self, key: str, data: bytes, content_type: str) -> str:
        """Uploads a swap input; returns a short-lived GET URL for the worker."""
        return await self.pool.run(self.storage.put_and_presign, key, data, content_type,
                                   self.storage.settings.temp_presign_expiry_s)

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
        self.requests = 0

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
        self.requests += 1
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
