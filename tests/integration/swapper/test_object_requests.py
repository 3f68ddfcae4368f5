"""The object requests on aiohttp (``objects.py``) against the local S3 server, directly or through a proxy
that records what was sent and injects faults: addressing, type and payload hash, signatures a store
verifies, rejected credentials, retries, 5xx, timeouts and resets, and their metrics."""

from __future__ import annotations

import hashlib
import json
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from contextlib import contextmanager

import pytest
from opentelemetry.trace import SpanKind, StatusCode

from services.common.metrics import value
from services.stack.s3_server import LocalS3
from services.swapper.blocking import BlockingPool
from services.swapper.metrics import SwapperMetrics
from services.swapper.objects import ObjectClient
from services.swapper.s3 import S3Bucket, StorageUnavailable
from services.swapper.settings import StorageSettings
from services.swapper.storage import Storage
from tests.integration.swapper.harness import image_bytes
from tests.integration.swapper.s3_proxy import Hang, Reset, S3Proxy, Status
from tests.spans import named
from tests.waiting import until

pytestmark = pytest.mark.integration

KEY = "tmp/job-1/0-0123abcd-target.png"


@pytest.fixture
def pool() -> Iterator[BlockingPool]:
    pool = BlockingPool("t-objects", 2)
    yield pool
    pool.shutdown()


@pytest.fixture
async def proxy(s3_server: LocalS3) -> AsyncIterator[S3Proxy]:
    proxy = await S3Proxy(s3_server.url).start()
    yield proxy
    await proxy.stop()


@pytest.fixture
async def made(pool: BlockingPool) -> AsyncIterator[list[Storage]]:
    """Storages made by the test, closed at its end."""
    storages: list[Storage] = []
    yield storages
    for storage in storages:
        await storage.objects.aclose()


def settings_for(endpoint: str, bucket: str, access_key: str = "test-access-key",
                 secret: str = "test-secret-key", **env: str) -> StorageSettings:
    return StorageSettings.from_env({"S3_ENDPOINT_URL": endpoint, "S3_ACCESS_KEY_ID": access_key,
                                     "S3_SECRET_ACCESS_KEY": secret, "S3_BUCKET": bucket, **env})


def make(made: list[Storage], pool: BlockingPool, endpoint: str, bucket: str, **kwargs: str) -> Storage:
    """A Storage on ``endpoint`` (the proxy, or the S3 server itself) whose retries wait next to no time."""
    settings = settings_for(endpoint, bucket, **kwargs)
    storage = Storage(S3Bucket(settings), ObjectClient(settings, pool, rng=lambda: 0.01), SwapperMetrics())
    made.append(storage)
    return storage


@pytest.fixture
def direct(s3_server: LocalS3, bucket: str) -> S3Bucket:
    """boto3 on the S3 server itself, the bucket created: what the store really holds."""
    s3 = S3Bucket(settings_for(s3_server.url, bucket))
    s3.client.create_bucket(Bucket=bucket, CreateBucketConfiguration={"LocationConstraint": "auto"})
    return s3


def metric(storage: Storage, name: str, operation: str) -> float:
    return value(storage.metrics.registry, name, {"operation": operation})


async def test_objects_are_stored_path_style_with_their_type_and_payload_hash(
        proxy: S3Proxy, made: list[Storage], pool: BlockingPool, bucket: str, direct: S3Bucket) -> None:
    storage = make(made, pool, proxy.url, bucket)
    data = image_bytes("PNG")
    await storage.put(KEY, data, "image/png")

    put = proxy.of("PUT")[-1]
    assert put.path == f"/{bucket}/{KEY}", "path-style addressing: the bucket is in the path, never the host"
    assert put.headers["Host"] == proxy.url.removeprefix("http://")
    assert put.body == data and put.headers["Content-Type"] == "image/png"
    assert put.headers["X-Amz-Content-SHA256"] == hashlib.sha256(data).hexdigest(), "the payload hash is signed"
    authorization = put.headers["Authorization"]
    assert authorization.startswith("AWS4-HMAC-SHA256 Credential=test-access-key/")
    assert "/auto/s3/aws4_request" in authorization, "SigV4 for region auto (R2's)"
    assert "SignedHeaders=content-type;host;x-amz-content-sha256;x-amz-date," in authorization

    stored = direct.client.get_object(Bucket=bucket, Key=KEY)
    assert stored["Body"].read() == data and stored["ContentType"] == "image/png"
    assert stored["ETag"].strip('"') == hashlib.md5(data).hexdigest(), "the store received the bytes intact"
    assert await storage.get(KEY) == data
    info = await storage.head(KEY)
    assert info is not None and info.size == len(data) and info.content_type == "image/png"
    assert info.last_modified is not None and abs(info.last_modified.timestamp() - time.time()) < 120
    assert await storage.get("tmp/job-1/missing.png") is None and await storage.head("tmp/job-1/x.png") is None
    assert metric(storage, "facegen_swapper_storage_operation_duration_seconds_count", "put_object") == 1
    assert metric(storage, "facegen_swapper_storage_operation_duration_seconds_count", "get_object") == 2
    assert metric(storage, "facegen_swapper_storage_operation_duration_seconds_count", "head_object") == 2
    assert metric(storage, "facegen_swapper_storage_errors_total", "get_object") == 0, "missing is no failure"


@contextmanager
def authenticating_store() -> Iterator[tuple[str, str]]:
    """moto checks every request's signature against an IAM user's key (created here) while the block runs."""
    from moto import settings
    from moto.core import DEFAULT_ACCOUNT_ID
    from moto.core.authorization import ActionAuthenticatorMixin
    from moto.iam.models import iam_backends

    iam = iam_backends[DEFAULT_ACCOUNT_ID]["aws"]
    user = f"swapper-{uuid.uuid4().hex[:8]}"
    iam.create_user("us-east-1", user)
    iam.put_user_policy(user, "objects", json.dumps({"Version": "2012-10-17", "Statement": [
        {"Effect": "Allow", "Action": "s3:*", "Resource": "*"}]}))
    key = iam.create_access_key(user)
    before = settings.INITIAL_NO_AUTH_ACTION_COUNT, ActionAuthenticatorMixin.request_count
    settings.INITIAL_NO_AUTH_ACTION_COUNT, ActionAuthenticatorMixin.request_count = 0, 0
    try:
        yield key.access_key_id, key.secret_access_key
    finally:
        settings.INITIAL_NO_AUTH_ACTION_COUNT, ActionAuthenticatorMixin.request_count = before


async def test_a_store_that_verifies_signatures_accepts_ours_and_names_rejected_credentials(
        s3_server: LocalS3, made: list[Storage], pool: BlockingPool, bucket: str, direct: S3Bucket) -> None:
    data = image_bytes("JPEG")
    with authenticating_store() as (access_key, secret):
        storage = make(made, pool, s3_server.url, bucket, access_key=access_key, secret=secret)
        await storage.put(KEY, data, "image/jpeg")
        assert await storage.get(KEY) == data
        assert (await storage.head(KEY)) is not None

        wrong_secret = make(made, pool, s3_server.url, bucket, access_key=access_key,
                            secret="not-the-secret")
        with pytest.raises(StorageUnavailable) as caught:
            await wrong_secret.put(KEY, data, "image/jpeg")
        message = str(caught.value)
        assert message.startswith("cannot store an image: the storage credentials (access key …")
        assert "were rejected" in message and "SignatureDoesNotMatch" in message
        assert "not-the-secret" not in message and access_key not in message

        unknown = make(made, pool, s3_server.url, bucket, access_key="AKIAUNKNOWNKEY000000")
        with pytest.raises(StorageUnavailable) as refused:
            await unknown.get(KEY)
        assert "cannot read an object: the storage credentials" in str(refused.value)
        assert "InvalidAccessKeyId" in str(refused.value)
    assert metric(wrong_secret, "facegen_swapper_storage_errors_total", "put_object") == 1


async def test_server_errors_are_retried_then_unavailable(proxy: S3Proxy, made: list[Storage],
                                                          pool: BlockingPool, bucket: str, direct: S3Bucket,
                                                          caplog: pytest.LogCaptureFixture) -> None:
    storage = make(made, pool, proxy.url, bucket, S3_MAX_ATTEMPTS="3")
    data = image_bytes()
    proxy.faults.extend([Status(503, "SlowDown")] * 3)
    before = len(proxy.of("PUT"))
    with pytest.raises(StorageUnavailable) as caught:
        await storage.put(KEY, data, "image/png")
    assert str(caught.value) == (f"cannot store an image: bucket '{bucket}' at {proxy.url} answered SlowDown "
                                 "(HTTP 503)")
    assert len(proxy.of("PUT")) - before == 3, "S3_MAX_ATTEMPTS attempts in all"
    assert sum("event=storage.retry" in line for line in caplog.messages) == 2
    assert metric(storage, "facegen_swapper_storage_errors_total", "put_object") == 1

    proxy.faults.append(Status(500, "InternalError"))
    await storage.put(KEY, data, "image/png")
    assert direct.client.get_object(Bucket=bucket, Key=KEY)["Body"].read() == data, "stored by the retry"


async def test_client_errors_are_not_retried_and_a_refusal_is_not_a_missing_object(
        proxy: S3Proxy, made: list[Storage], pool: BlockingPool, bucket: str, direct: S3Bucket) -> None:
    storage = make(made, pool, proxy.url, bucket, S3_MAX_ATTEMPTS="3")
    proxy.faults.append(Status(403, "AccessDenied"))
    before = len(proxy.of("GET"))
    with pytest.raises(StorageUnavailable) as denied:
        await storage.get(KEY)
    assert "cannot read an object: the storage credentials" in str(denied.value)
    assert "(AccessDenied)" in str(denied.value)
    assert len(proxy.of("GET")) - before == 1
    proxy.faults.append(Status(403, "AccessDenied"))
    with pytest.raises(StorageUnavailable) as head_denied:
        await storage.head(KEY)
    assert "credentials" in str(head_denied.value) and "(403)" in str(head_denied.value), \
        "a HEAD answer has no body: its code is its status, as boto3 reports it"


async def test_a_store_that_does_not_answer_is_unavailable_after_the_read_timeout(
        proxy: S3Proxy, made: list[Storage], pool: BlockingPool, bucket: str, direct: S3Bucket) -> None:
    storage = make(made, pool, proxy.url, bucket, S3_MAX_ATTEMPTS="2", S3_READ_TIMEOUT_SECONDS="0.3")
    proxy.faults.extend([Hang(), Hang()])
    started = time.monotonic()
    with pytest.raises(StorageUnavailable) as caught:
        await storage.put(KEY, image_bytes(), "image/png")
    assert time.monotonic() - started < 5
    assert str(caught.value) == (f"cannot store an image: bucket '{bucket}' at {proxy.url} cannot be reached "
                                 "(ReadTimeoutError)")
    assert [r.method for r in proxy.requests[-2:]] == ["PUT", "PUT"]


async def test_a_reset_connection_is_retried(proxy: S3Proxy, made: list[Storage], pool: BlockingPool,
                                             bucket: str, direct: S3Bucket) -> None:
    storage = make(made, pool, proxy.url, bucket, S3_MAX_ATTEMPTS="2")
    data = image_bytes()
    proxy.faults.append(Reset())
    await storage.put(KEY, data, "image/png")
    assert direct.client.get_object(Bucket=bucket, Key=KEY)["Body"].read() == data
    # aiohttp itself sends a request once more at once when a kept-alive connection was dropped: the two
    # attempts may make up to four requests.
    proxy.faults.extend([Reset()] * 4)
    with pytest.raises(StorageUnavailable) as caught:
        await storage.get(KEY)
    assert "cannot be reached (ConnectionClosedError)" in str(caught.value)


async def test_a_refused_connection_is_unavailable(made: list[Storage], pool: BlockingPool, bucket: str) -> None:
    closed = LocalS3().start()
    url = closed.url
    closed.stop()
    storage = make(made, pool, url, bucket, S3_MAX_ATTEMPTS="2")
    with pytest.raises(StorageUnavailable) as caught:
        await storage.put(KEY, image_bytes(), "image/png")
    assert str(caught.value) == (f"cannot store an image: bucket '{bucket}' at {url} cannot be reached "
                                 "(EndpointConnectionError)")


async def test_each_object_request_is_a_client_span_as_boto3s_are(proxy: S3Proxy, made: list[Storage],
                                                                  pool: BlockingPool, bucket: str,
                                                                  direct: S3Bucket, spans) -> None:
    storage = make(made, pool, proxy.url, bucket)
    proxy.faults.append(Status(500, "InternalError"))
    await storage.put(KEY, image_bytes(), "image/png")
    assert await storage.head("tmp/job-1/missing.png") is None
    put, head = await until(lambda: named(spans, "S3.PutObject") + named(spans, "S3.HeadObject"), 5, "the spans")
    assert put.kind == SpanKind.CLIENT and put.attributes["rpc.system"] == "aws-api"
    assert put.attributes["rpc.method"] == "PutObject" and put.attributes["aws.s3.bucket"] == bucket
    assert put.attributes["http.status_code"] == 200 and put.attributes["retry_attempts"] == 1
    assert put.attributes["server.address"] == "127.0.0.1" and put.status.status_code == StatusCode.UNSET
    assert head.attributes["http.status_code"] == 404 and head.status.status_code == StatusCode.ERROR
    assert [event.name for event in head.events] == ["exception"], "a missing object is an error answer, as in boto3's"
