"""Storage against the local S3 server: lifecycle rules, start-up errors, storage outages."""

from __future__ import annotations

import asyncio
from urllib.parse import parse_qs, urlsplit

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from services.stack.s3_server import LocalS3
from services.swapper.bucket import BucketSetup
from services.swapper.s3 import StorageUnavailable
from tests.integration.swapper.harness import PRIMARY, MakeSwapper, image_bytes, result_of, until

pytestmark = pytest.mark.integration


def rules(harness) -> dict[str, tuple[str, int]]:  # type: ignore[no-untyped-def]
    storage = harness.app.storage
    config = storage.client.get_bucket_lifecycle_configuration(Bucket=storage.bucket)
    return {rule["ID"]: (rule["Filter"]["Prefix"], rule["Expiration"]["Days"]) for rule in config["Rules"]}


async def test_start_installs_lifecycle_rules_for_temporary_and_reference_objects(make_swapper: MakeSwapper,
                                                                                  ) -> None:
    harness = await make_swapper(S3_REFERENCE_EXPIRY_DAYS="3")
    assert rules(harness) == {"facegen-tmp": ("tmp/", 1), "facegen-refs": ("refs/", 3)}


async def test_lifecycle_keeps_other_rules_and_is_idempotent(make_swapper: MakeSwapper) -> None:
    harness = await make_swapper(S3_RESULT_EXPIRY_DAYS="30")
    storage = harness.app.storage
    assert storage is not None
    foreign = {"ID": "someone-else", "Filter": {"Prefix": "logs/"}, "Status": "Enabled",
               "Expiration": {"Days": 90}}
    current = storage.client.get_bucket_lifecycle_configuration(Bucket=storage.bucket)["Rules"]
    storage.client.put_bucket_lifecycle_configuration(Bucket=storage.bucket,
                                                      LifecycleConfiguration={"Rules": [*current, foreign]})
    assert "already in place" in BucketSetup(storage.s3).ensure_ready()[-1]
    assert rules(harness) == {"facegen-tmp": ("tmp/", 1), "facegen-refs": ("refs/", 7),
                              "facegen-results": ("results/", 30), "someone-else": ("logs/", 90)}


async def test_lifecycle_is_left_alone_when_not_managed(make_swapper: MakeSwapper) -> None:
    harness = await make_swapper(S3_MANAGE_LIFECYCLE="false")
    storage = harness.app.storage
    assert storage is not None
    with pytest.raises(storage.client.exceptions.ClientError) as caught:
        storage.client.get_bucket_lifecycle_configuration(Bucket=storage.bucket)
    assert "NoSuchLifecycleConfiguration" in str(caught.value)


async def test_missing_bucket_is_a_clear_error_and_the_service_stays_not_serving(make_swapper: MakeSwapper,
                                                                                  bucket: str) -> None:
    harness = await make_swapper(ready=False, S3_CREATE_BUCKET="false")
    with pytest.raises(StorageUnavailable) as caught:
        await harness.app.prepare_once()
    assert f"bucket '{bucket}'" in str(caught.value) and "does not exist" in str(caught.value)
    assert "S3_CREATE_BUCKET" in str(caught.value)

    starting = asyncio.create_task(harness.app.ready())
    await until(lambda: "does not exist" in harness.app.core.not_ready_reason, 5, "the first failed attempt")
    health = health_pb2_grpc.HealthStub(harness.channel)
    answer = await health.Check(health_pb2.HealthCheckRequest(service="facegen.v1.SwapperService"))
    assert answer.status == health_pb2.HealthCheckResponse.NOT_SERVING
    with pytest.raises(grpc.aio.AioRpcError) as refused:
        await harness.swap(harness.request(""))
    assert refused.value.code() == grpc.StatusCode.UNAVAILABLE
    assert "not ready" in (refused.value.details() or "") and "does not exist" in (refused.value.details() or "")
    assert not starting.done(), "the service keeps retrying instead of exiting"

    storage = harness.app.storage
    assert storage is not None
    storage.client.create_bucket(Bucket=bucket, CreateBucketConfiguration={"LocationConstraint": "auto"})
    await asyncio.wait_for(starting, 10)
    result = result_of(await harness.swap(harness.request("")))
    assert result.key.startswith("results/")


async def test_storage_outage_is_unavailable_never_a_placeholder(make_swapper: MakeSwapper) -> None:
    private = LocalS3().start()
    url = private.url
    try:
        harness = await make_swapper(S3_ENDPOINT_URL=url)
        reference = await harness.put_reference()
    finally:
        private.stop()
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await harness.swap(harness.request(reference))
    assert caught.value.code() == grpc.StatusCode.UNAVAILABLE
    details = caught.value.details() or ""
    assert "cannot store an image" in details and url in details and "cannot be reached" in details
    with pytest.raises(grpc.aio.AioRpcError) as put_failed:
        await harness.put_reference(image_bytes("PNG", color=(1, 1, 1)))
    assert put_failed.value.code() == grpc.StatusCode.UNAVAILABLE
    assert harness.fake.count("run") == 0
    await until(lambda: harness.blocking_calls() == 0, 5, "idle storage pool")


async def test_outage_after_the_remote_swap_is_unavailable_and_cancels_nothing(make_swapper: MakeSwapper,
                                                                               fake_runpod) -> None:
    private = LocalS3().start()
    harness = await make_swapper(S3_ENDPOINT_URL=private.url)
    reference = await harness.put_reference()
    fake_runpod.endpoint(PRIMARY).plan.run_s = 0.3
    call = harness.stub.Swap(harness.request(reference))
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        async for event in call:
            if event.WhichOneof("event") == "submitted":
                private.stop()
    assert caught.value.code() == grpc.StatusCode.UNAVAILABLE
    assert fake_runpod.count("cancel") == 0


async def test_presigned_urls_use_the_configured_expiries(make_swapper: MakeSwapper) -> None:
    harness = await make_swapper(S3_PRESIGN_EXPIRY_SECONDS="123", S3_TEMP_PRESIGN_EXPIRY_SECONDS="456")
    events = await harness.swap(harness.request(await harness.put_reference()))
    result = result_of(events)
    assert parse_qs(urlsplit(result.url).query)["X-Amz-Expires"] == ["123"]
    assert "X-Amz-Algorithm=AWS4-HMAC-SHA256" in result.url, "SigV4"
    assert "/auto/s3/aws4_request" in parse_qs(urlsplit(result.url).query)["X-Amz-Credential"][0] + "/", \
        "region auto"
    job_input = next(r.body["input"] for r in harness.fake.requests if r.route == "run")
    for url in (job_input["source_file"], job_input["target_file"]):
        assert parse_qs(urlsplit(url).query)["X-Amz-Expires"] == ["456"]
