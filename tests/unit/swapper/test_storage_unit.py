"""Storage logic without a server: keys, error messages, reference dedup and refresh, batched deletes."""

from __future__ import annotations

import asyncio
import hashlib
import io
import threading
from datetime import UTC, datetime, timedelta

import pytest
from botocore.exceptions import ClientError, EndpointConnectionError, NoCredentialsError
from PIL import Image, PngImagePlugin

from services.common.images import ImageLimits
from services.common.metrics import value
from services.swapper.blocking import BlockingPool
from services.swapper.bucket import BucketSetup
from services.swapper.deleter import BatchDeleter
from services.swapper.inputs import check_image
from services.swapper.keys import is_reference_key, is_temp_key_of, reference_key, result_key, temp_key
from services.swapper.metrics import SwapperMetrics
from services.swapper.objects import ObjectClient
from services.swapper.s3 import S3Bucket
from services.swapper.settings import StorageSettings
from services.swapper.storage import ObjectInfo, ObjectStore, Storage
from tests.unit.gateway import sample_images as images
from tests.waiting import until

pytestmark = pytest.mark.unit


def storage(**env: str) -> Storage:
    settings = StorageSettings.from_env({"S3_ENDPOINT_URL": "https://acct.r2.cloudflarestorage.com",
                                         "S3_ACCESS_KEY_ID": "AKIAEXAMPLEKEYID0123", "S3_SECRET_ACCESS_KEY": "s",
                                         "S3_BUCKET": "faces", **env})
    return Storage(S3Bucket(settings), ObjectClient(settings, BlockingPool("unit-sign", 1)))


def client_error(code: str, status: int) -> ClientError:
    return ClientError({"Error": {"Code": code, "Message": "x"}, "ResponseMetadata": {"HTTPStatusCode": status}},
                       "HeadBucket")


def test_keys() -> None:
    data = b"face bytes"
    assert reference_key(data, "image/jpeg") == f"refs/{hashlib.sha256(data).hexdigest()}.jpg"
    key = temp_key("job-1", 3, "image/webp")
    assert key.startswith("tmp/job-1/3-") and key.endswith("-target.webp")
    assert temp_key("job-1", 3, "image/webp") != key, "retries of one job never share a temporary key"
    assert result_key("job-1", 0, True, "image/png") == "results/job-1/0-swapped.png"
    assert result_key("job-1", 1, False, "image/jpeg") == "results/job-1/1-original.jpg"


def test_key_checks() -> None:
    assert is_reference_key(reference_key(b"x", "image/png"))
    assert not is_reference_key("refs/../x.png") and not is_reference_key("tmp/j/0-00000000-target.png")
    key = temp_key("job-1", 3, "image/png")
    assert is_temp_key_of(key, "job-1", 3)
    assert not is_temp_key_of(key, "job-1", 2), "another image of the job"
    assert not is_temp_key_of(key, "job-2", 3), "another job"
    assert not is_temp_key_of(key.replace("tmp/", "results/"), "job-1", 3)
    assert not is_temp_key_of(key + "/x", "job-1", 3)


def test_missing_bucket_message() -> None:
    message = storage().s3.describe(client_error("404", 404), "check the bucket")
    assert "bucket 'faces' at https://acct.r2.cloudflarestorage.com does not exist" in message
    assert "S3_CREATE_BUCKET" in message


@pytest.mark.parametrize(("code", "status"), [("InvalidAccessKeyId", 403), ("SignatureDoesNotMatch", 403),
                                              ("AccessDenied", 403), ("403", 403), ("Unauthorized", 401)])
def test_rejected_credentials_message_masks_the_key(code: str, status: int) -> None:
    message = storage().s3.describe(client_error(code, status), "check the bucket")
    assert "credentials" in message and "rejected" in message
    assert "AKIAEXAMPLEKEYID0123" not in message
    assert "access key …0123" in message


def test_unreachable_and_missing_credentials_messages() -> None:
    unreachable = storage().s3.describe(EndpointConnectionError(endpoint_url="https://x"), "store an image")
    assert unreachable.startswith("cannot store an image:") and "cannot be reached" in unreachable
    assert "no storage credentials" in storage().s3.describe(NoCredentialsError(), "check the bucket")


def test_wanted_rules_follow_the_settings() -> None:
    bucket = storage(S3_TEMP_EXPIRY_DAYS="2", S3_REFERENCE_EXPIRY_DAYS="9", S3_RESULT_EXPIRY_DAYS="0").s3
    rules = BucketSetup(bucket).wanted_rules()
    assert [(r["ID"], r["Filter"]["Prefix"], r["Expiration"]["Days"]) for r in rules] == [
        ("facegen-tmp", "tmp/", 2), ("facegen-refs", "refs/", 9)]


def test_result_urls_are_public_when_a_base_is_set() -> None:
    assert storage(S3_PUBLIC_BASE_URL="https://img.example.com").url_for_result("results/j/0-swapped.png") == \
        "https://img.example.com/results/j/0-swapped.png"
    presigned = storage().url_for_result("results/j/0-swapped.png")
    assert presigned.startswith("https://acct.r2.cloudflarestorage.com/faces/results/j/0-swapped.png?")
    assert "X-Amz-Expires=3600" in presigned


class StubStorage:
    """Records calls; objects live in a dict."""

    def __init__(self, settings_storage: Storage) -> None:
        self.settings = settings_storage.settings
        self.objects: dict[str, tuple[bytes, datetime]] = {}
        self.puts: list[str] = []
        self.metrics = SwapperMetrics()
        self.gate = asyncio.Event()
        self.gate.set()

    async def head(self, key: str) -> ObjectInfo | None:
        await self.gate.wait()
        if key not in self.objects:
            return None
        data, modified = self.objects[key]
        return ObjectInfo(len(data), modified, "image/png")

    async def put(self, key: str, data: bytes, content_type: str) -> None:
        self.puts.append(key)
        self.objects[key] = (data, datetime.now(UTC))

    def delete_many(self, keys: list[str]) -> list[str]:
        return []


@pytest.fixture
def metrics() -> SwapperMetrics:
    return SwapperMetrics()


@pytest.fixture
def pool(metrics: SwapperMetrics) -> BlockingPool:
    pool = BlockingPool("unit", 8, metrics.blocking_in_flight.labels(pool="unit"))
    yield pool  # type: ignore[misc]
    pool.shutdown()


async def test_reference_dedup_and_refresh_of_old_copies(pool: BlockingPool) -> None:
    stub = StubStorage(storage(S3_REFERENCE_EXPIRY_DAYS="4"))
    store = ObjectStore(stub, pool)  # type: ignore[arg-type]
    key, deduplicated = await store.put_reference(b"face", "image/png")
    assert not deduplicated and stub.puts == [key]
    assert await store.put_reference(b"face", "image/png") == (key, True)
    assert stub.puts == [key], "known references are not even looked up again"

    fresh = ObjectStore(stub, pool)  # type: ignore[arg-type]
    stub.objects[key] = (b"face", datetime.now(UTC) - timedelta(days=1))
    assert await fresh.put_reference(b"face", "image/png") == (key, True)
    assert stub.puts == [key]

    again = ObjectStore(stub, pool)  # type: ignore[arg-type]
    stub.objects[key] = (b"face", datetime.now(UTC) - timedelta(days=3))
    assert await again.put_reference(b"face", "image/png") == (key, False)
    assert stub.puts == [key, key], "a copy past half its expiry is uploaded again to restart its clock"


async def test_concurrent_identical_references_share_one_upload(pool: BlockingPool) -> None:
    stub = StubStorage(storage())
    stub.gate.clear()
    store = ObjectStore(stub, pool)  # type: ignore[arg-type]
    calls = [asyncio.ensure_future(store.put_reference(b"same", "image/png")) for _ in range(10)]
    await asyncio.sleep(0)
    stub.gate.set()
    answers = await asyncio.gather(*calls)
    assert len(stub.puts) == 1
    assert sorted(dedup for _, dedup in answers) == [False] + [True] * 9
    assert value(stub.metrics.registry, "facegen_swapper_reference_uploads_total") == 1
    assert value(stub.metrics.registry, "facegen_swapper_reference_cache_hits_total") == 9


async def test_batch_deleter_coalesces_concurrent_deletes(pool: BlockingPool, metrics: SwapperMetrics) -> None:
    batches: list[list[str]] = []
    release = threading.Event()

    def delete_many(keys: list[str]) -> list[str]:
        batches.append(keys)
        release.wait(5)
        return ["tmp/bad"] if "tmp/bad" in keys else []

    deleter = BatchDeleter(pool, delete_many, linger_s=0.01)
    first = [deleter.delete(f"tmp/{i}") for i in range(3)]
    await until(lambda: len(batches) == 1)
    second = [deleter.delete("tmp/3"), deleter.delete("tmp/bad")]
    release.set()
    outcomes = await asyncio.gather(*first, *second)
    assert batches == [["tmp/0", "tmp/1", "tmp/2"], ["tmp/3", "tmp/bad"]], \
        "deletes that arrive together share a request; those arriving meanwhile share the next"
    assert outcomes == [False] * 4 + [True]
    assert value(metrics.registry, "facegen_swapper_blocking_calls_in_flight", {"pool": "unit"}) == 0


def test_check_image_strips_metadata_only_when_present() -> None:
    clean = io.BytesIO()
    Image.new("RGB", (16, 16), (1, 2, 3)).save(clean, "PNG")
    checked = check_image(clean.getvalue(), "target_image", ImageLimits())
    assert checked.data == clean.getvalue(), "clean images are stored byte for byte"

    tagged = io.BytesIO()
    info = PngImagePlugin.PngInfo()
    info.add_text("parameters", "a prompt with a name in it")
    Image.new("RGB", (16, 16), (1, 2, 3)).save(tagged, "PNG", pnginfo=info)
    stripped = check_image(tagged.getvalue(), "target_image", ImageLimits())
    assert b"a prompt with a name" not in stripped.data
    assert stripped.info.mime == "image/png" and (stripped.info.width, stripped.info.height) == (16, 16)


def test_check_image_keeps_only_the_primary_picture_of_a_multi_picture_jpeg() -> None:
    checked = check_image(images.multi_picture_jpeg(), "target_image", ImageLimits())
    assert checked.info.mime == "image/jpeg" and (checked.info.width, checked.info.height) == (64, 48)
    images.assert_plain_jpeg_of_the_primary_picture(checked.data)
