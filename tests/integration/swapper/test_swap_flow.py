"""Swap and PutReference end to end: embedded S3, the fake RunPod, a real gRPC server."""

from __future__ import annotations

import asyncio
import io

import grpc
import pytest
import requests
from PIL import Image, ImageOps

from facegen.v1 import common_pb2
from services.common.images import sniff_mime
from services.stack.runpod_emulator import JobPlan
from tests.integration.swapper.harness import API_KEY, PRIMARY, MakeSwapper, image_bytes, kinds, result_of

pytestmark = pytest.mark.integration


async def test_successful_swap_streams_every_step_and_stores_the_swapped_image(make_swapper: MakeSwapper,
                                                                               ) -> None:
    harness = await make_swapper()
    harness.fake.endpoint(PRIMARY).plan = JobPlan(queue_s=0.05, run_s=0.2)
    target = image_bytes(size=(64, 48), color=(10, 200, 30))
    reference = await harness.put_reference()
    events = await harness.swap(harness.request(reference, job_id="job-ok", index=2, target=target))

    assert kinds(events)[:2] == ["stored", "submitted"]
    assert events[0].stored.key.startswith("tmp/job-ok/2-")
    assert events[1].submitted.endpoint == PRIMARY
    remote_id = events[1].submitted.remote_job_id
    statuses = [e.remote_status for e in events if e.WhichOneof("event") == "remote_status"]
    assert [s.status for s in statuses] == ["IN_QUEUE", "IN_PROGRESS", "COMPLETED"]
    assert all(s.remote_job_id == remote_id and s.endpoint == PRIMARY for s in statuses)
    assert statuses[-1].delay_time_ms == 50
    assert 150 <= statuses[-1].execution_time_ms <= 400

    result = result_of(events)
    assert result.method == common_pb2.FACE_SWAP_METHOD_EXTERNAL_API
    assert result.fallback_reason == common_pb2.FALLBACK_REASON_UNSPECIFIED
    assert result.fallback_message == ""
    assert result.key == "results/job-ok/2-swapped.png"
    assert (result.content_type, result.width, result.height) == ("image/png", 64, 48)
    fetched = await asyncio.to_thread(requests.get, result.url, timeout=10)
    assert fetched.status_code == 200
    assert fetched.headers["Content-Type"] == "image/png"
    with Image.open(io.BytesIO(fetched.content)) as got, Image.open(io.BytesIO(target)) as sent:
        assert got.convert("RGB").getpixel((5, 5)) == ImageOps.invert(sent.convert("RGB")).getpixel((5, 5))
    await harness.assert_quiet()

    runs = [r for r in harness.fake.requests if r.route == "run"]
    assert len(runs) == 1
    assert runs[0].authorization == f"Bearer {API_KEY}"
    job_input = runs[0].body["input"]
    assert job_input["process_type"] == "single_image"
    assert job_input["options"] == {"mouth_mask": False, "use_face_enhancer": False}
    assert job_input["target_file"].startswith(harness.settings.storage.endpoint_url)
    assert "X-Amz-Signature=" in job_input["source_file"] and "/refs/" in job_input["source_file"]
    assert runs[0].body["policy"]["executionTimeout"] < harness.settings.runpod.deadline_s * 1000
    assert harness.fake.count("cancel") == 0


async def test_swap_options_reach_the_worker(make_swapper: MakeSwapper) -> None:
    harness = await make_swapper(FACE_SWAP_PROCESS_TYPE="single-image")
    reference = await harness.put_reference()
    request = harness.request(reference)
    request.options.mouth_mask = True
    request.options.use_face_enhancer = True
    result_of(await harness.swap(request))
    body = next(r.body for r in harness.fake.requests if r.route == "run")
    assert body["input"]["process_type"] == "single-image"
    assert body["input"]["options"] == {"mouth_mask": True, "use_face_enhancer": True}


async def test_store_only_returns_the_original_with_reason_disabled(make_swapper: MakeSwapper) -> None:
    harness = await make_swapper()
    target = image_bytes("JPEG", size=(40, 30))
    events = await harness.swap(harness.request("", job_id="store-only", target=target))
    assert kinds(events) == ["stored", "result"]
    result = result_of(events)
    assert result.method == common_pb2.FACE_SWAP_METHOD_NONE
    assert result.fallback_reason == common_pb2.FALLBACK_REASON_DISABLED
    assert "no reference face" in result.fallback_message
    assert result.key == "results/store-only/0-original.jpg"
    assert result.content_type == "image/jpeg"
    assert harness.get(result.key) == target
    assert harness.head(result.key)["ContentType"] == "image/jpeg"
    assert harness.fake.requests == []
    await harness.assert_quiet()


async def test_no_endpoint_configured_is_disabled(make_swapper: MakeSwapper) -> None:
    harness = await make_swapper(FACE_SWAP_ENDPOINT=None)
    reference = await harness.put_reference()
    result = result_of(await harness.swap(harness.request(reference)))
    assert result.method == common_pb2.FACE_SWAP_METHOD_NONE
    assert result.fallback_reason == common_pb2.FALLBACK_REASON_DISABLED
    assert "FACE_SWAP_ENDPOINT" in result.fallback_message
    assert harness.fake.requests == []
    await harness.assert_quiet()


async def test_webp_result_is_stored_under_a_webp_key(make_swapper: MakeSwapper) -> None:
    harness = await make_swapper()
    import base64

    webp = image_bytes("WEBP", size=(30, 20))
    harness.fake.endpoint(PRIMARY).plan = JobPlan(output={"result": "data:image/jpeg;base64,"
                                                          + base64.b64encode(webp).decode()})
    result = result_of(await harness.swap(harness.request(await harness.put_reference(), job_id="w")))
    assert result.key == "results/w/0-swapped.webp"
    assert result.content_type == "image/webp", "the bytes decide, not the data URI's label"
    assert harness.head(result.key)["ContentType"] == "image/webp"
    assert sniff_mime(harness.get(result.key)) == "image/webp"


@pytest.mark.parametrize(("target", "needle"), [
    (b"not an image", "target_image is not a JPEG, PNG or WebP image"),
    (image_bytes()[:60], "target_image is truncated or corrupt"),
    (b"", "target_image is empty"),
])
async def test_invalid_target_is_invalid_argument_and_stores_nothing(make_swapper: MakeSwapper, target: bytes,
                                                                    needle: str) -> None:
    harness = await make_swapper()
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await harness.swap(harness.request(await harness.put_reference(), target=target))
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert needle in (caught.value.details() or "")
    assert harness.objects("tmp/") == [] and harness.objects("results/") == []
    assert harness.fake.requests == []


async def test_missing_reference_is_not_found(make_swapper: MakeSwapper) -> None:
    harness = await make_swapper()
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await harness.swap(harness.request("refs/" + "0" * 64 + ".png"))
    assert caught.value.code() == grpc.StatusCode.NOT_FOUND
    assert "PutReference" in (caught.value.details() or "")
    assert harness.objects() == []


@pytest.mark.parametrize(("field", "value", "needle"), [
    ("reference_key", "tmp/x.png", "reference_key"),
    ("job_id", "../etc", "job_id"),
    ("job_id", "", "job_id"),
    ("image_index", -1, "image_index"),
    ("deadline_ms", -5, "deadline_ms"),
])
async def test_malformed_fields_are_invalid_argument(make_swapper: MakeSwapper, field: str, value: object,
                                                     needle: str) -> None:
    harness = await make_swapper()
    request = harness.request()
    setattr(request, field, value)
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await harness.swap(request)
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert needle in (caught.value.details() or "")


async def test_target_metadata_is_stripped_before_storing(make_swapper: MakeSwapper) -> None:
    harness = await make_swapper()
    out = io.BytesIO()
    exif = Image.Exif()
    exif[0x010F] = "SecretCam"  # Make
    Image.new("RGB", (32, 32), (1, 2, 3)).save(out, "JPEG", exif=exif.tobytes())
    assert b"SecretCam" in out.getvalue()
    result = result_of(await harness.swap(harness.request("", target=out.getvalue())))
    stored = harness.get(result.key)
    assert b"SecretCam" not in stored
    assert sniff_mime(stored) == "image/jpeg"


async def test_public_base_url_gives_public_result_urls(make_swapper: MakeSwapper) -> None:
    harness = await make_swapper(S3_PUBLIC_BASE_URL="https://images.example.com/")
    result = result_of(await harness.swap(harness.request("", job_id="pub")))
    assert result.url == "https://images.example.com/results/pub/0-original.png"


async def test_same_reference_twice_is_uploaded_once(make_swapper: MakeSwapper) -> None:
    harness = await make_swapper()
    face = image_bytes("JPEG", color=(5, 6, 7))
    first = await harness.stub.PutReference(harness_request(face))
    second = await harness.stub.PutReference(harness_request(face))
    assert first.key == second.key
    assert first.key.startswith("refs/") and first.key.endswith(".jpg")
    assert (first.deduplicated, second.deduplicated) == (False, True)
    assert harness.objects("refs/") == [first.key]
    assert harness.head(first.key)["ContentType"] == "image/jpeg"
    assert harness.metric("facegen_swapper_reference_uploads_total") == 1
    assert harness.metric("facegen_swapper_reference_cache_hits_total") == 1


async def test_concurrent_identical_references_share_one_upload(make_swapper: MakeSwapper, s3_server) -> None:
    harness = await make_swapper()
    face = image_bytes("PNG", color=(99, 98, 97))
    before = s3_server.counts.get("PUT refs/", 0)
    answers = await asyncio.gather(*(harness.stub.PutReference(harness_request(face)) for _ in range(20)))
    assert len({answer.key for answer in answers}) == 1
    assert sum(not answer.deduplicated for answer in answers) == 1
    assert s3_server.counts.get("PUT refs/", 0) - before == 1


async def test_put_reference_rejects_non_images(make_swapper: MakeSwapper) -> None:
    harness = await make_swapper()
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await harness.stub.PutReference(harness_request(b"\x89PNG\r\n\x1a\nbroken"))
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert harness.objects("refs/") == []


def harness_request(data: bytes):  # type: ignore[no-untyped-def]
    from facegen.v1 import swapper_pb2

    return swapper_pb2.PutReferenceRequest(job_id="ref-job", image=data)
