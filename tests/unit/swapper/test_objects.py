"""The object requests are the requests boto3 sends (same URL, same signature), and their retry rules."""

from __future__ import annotations

import datetime
from collections.abc import Iterator
from typing import Any
from unittest import mock

import pytest
from botocore.awsrequest import AWSRequest, AWSResponse
from botocore.exceptions import (
    ClientError,
    ConnectionClosedError,
    EndpointConnectionError,
    NoCredentialsError,
    ReadTimeoutError,
)

from services.swapper.blocking import BlockingPool
from services.swapper.objects import _INLINE_HASH_BYTES, ObjectClient
from services.swapper.s3 import S3Bucket
from services.swapper.settings import StorageSettings

pytestmark = pytest.mark.unit

KEY = "tmp/job-1/0-0123abcd-target.png"
NOW = datetime.datetime(2026, 1, 2, 3, 4, 5, tzinfo=datetime.UTC)


def settings(**env: str) -> StorageSettings:
    return StorageSettings.from_env({"S3_ACCESS_KEY_ID": "AKIAEXAMPLEKEYID0123", "S3_SECRET_ACCESS_KEY": "secret",
                                     "S3_BUCKET": "faces", **env})


R2 = {"R2_ACCOUNT_ID": "0123456789abcdef"}


@pytest.fixture
def pool() -> Iterator[BlockingPool]:
    pool = BlockingPool("unit-objects", 1)
    yield pool
    pool.shutdown()


@pytest.fixture(autouse=True)
def frozen_clock() -> Iterator[None]:
    with mock.patch("botocore.auth.get_current_datetime", return_value=NOW):
        yield


class _Raw:
    def stream(self) -> Iterator[bytes]:
        return iter([b""])


def boto3_request(storage: StorageSettings, operation: str, **params: Any) -> AWSRequest:
    """The request boto3 would send for ``operation`` (captured before it leaves)."""
    client = S3Bucket(storage).client
    sent: list[AWSRequest] = []

    def capture(request: AWSRequest, **_: Any) -> AWSResponse:
        sent.append(request)
        return AWSResponse(request.url, 200, {}, _Raw())

    client.meta.events.register(f"before-send.s3.{operation}", capture)
    method = {"PutObject": client.put_object, "GetObject": client.get_object, "HeadObject": client.head_object}
    method[operation](Bucket="faces", Key=KEY, **params)
    return sent[0]


@pytest.mark.parametrize("env", [R2, {"S3_ENDPOINT_URL": "http://127.0.0.1:9000"}], ids=["r2", "local"])
@pytest.mark.parametrize("size", [5, _INLINE_HASH_BYTES + 1], ids=["small", "hashed-in-a-thread"])
async def test_a_put_is_signed_exactly_as_boto3_signs_it(env: dict[str, str], size: int,
                                                         pool: BlockingPool) -> None:
    storage = settings(**env)
    data = b"x" * size
    expected = boto3_request(storage, "PutObject", Body=data, ContentType="image/png")
    client = ObjectClient(storage, pool)
    url = client.url(KEY)
    ours = await client._signed("PUT", url, data, {"Content-Type": "image/png"})
    assert url == expected.url
    for header in ("Authorization", "X-Amz-Date", "X-Amz-Content-SHA256", "Content-Type"):
        assert ours[header] == expected.headers[header].decode(), header


@pytest.mark.parametrize(("operation", "method"), [("GetObject", "GET"), ("HeadObject", "HEAD")])
async def test_reads_are_signed_exactly_as_boto3_signs_them(operation: str, method: str,
                                                            pool: BlockingPool) -> None:
    storage = settings(**R2)
    expected = boto3_request(storage, operation)
    client = ObjectClient(storage, pool)
    ours = await client._signed(method, client.url(KEY), b"", {})
    assert client.url(KEY) == expected.url
    assert ours["Authorization"] == expected.headers["Authorization"].decode()


@pytest.mark.parametrize("env", [R2, {"S3_ENDPOINT_URL": "http://127.0.0.1:9000", "S3_REGION": "eu-west-1"}])
def test_presigned_urls_are_the_ones_boto3_makes(env: dict[str, str], pool: BlockingPool) -> None:
    storage = settings(**env)
    expected = S3Bucket(storage).client.generate_presigned_url("get_object", Params={"Bucket": "faces", "Key": KEY},
                                                               ExpiresIn=900)
    assert ObjectClient(storage, pool).presign(KEY, 900) == expected


def test_r2_objects_are_addressed_by_path(pool: BlockingPool) -> None:
    assert ObjectClient(settings(**R2), pool).url(KEY) == \
        f"https://0123456789abcdef.r2.cloudflarestorage.com/faces/{KEY}"


def error(code: str, status: int) -> ClientError:
    return ClientError({"Error": {"Code": code}, "ResponseMetadata": {"HTTPStatusCode": status}}, "PutObject")


@pytest.mark.parametrize(("failure", "ceiling_s"), [
    (error("InternalError", 500), 0.05), (error("ServiceUnavailable", 503), 0.05), (error("x", 502), 0.05),
    (error("RequestTimeout", 400), 0.05), (error("SlowDown", 503), 1.0), (error("TooManyRequests", 429), 1.0),
    (EndpointConnectionError(endpoint_url="http://x"), 0.05), (ConnectionClosedError(endpoint_url="http://x"), 0.05),
    (ReadTimeoutError(endpoint_url="http://x"), 0.05),
])
def test_transient_failures_are_retried_after_a_jittered_exponential_delay(failure: Exception, ceiling_s: float,
                                                                           pool: BlockingPool) -> None:
    client = ObjectClient(settings(**R2, S3_MAX_ATTEMPTS="4"), pool, rng=lambda: 1.0)
    assert [client._retry_delay(failure, attempt) for attempt in (1, 2, 3)] == \
        [ceiling_s, ceiling_s * 2, ceiling_s * 4]
    assert client._retry_delay(failure, 4) is None, "S3_MAX_ATTEMPTS attempts in all"


@pytest.mark.parametrize("failure", [error("AccessDenied", 403), error("NoSuchKey", 404),
                                     error("SignatureDoesNotMatch", 403), error("InvalidArgument", 400),
                                     NoCredentialsError()])
def test_final_failures_are_not_retried(failure: Exception, pool: BlockingPool) -> None:
    assert ObjectClient(settings(**R2), pool)._retry_delay(failure, 1) is None
