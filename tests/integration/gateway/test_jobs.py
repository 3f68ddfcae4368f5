"""Jobs through a real gateway against fake upstream servers: outcomes and input handling."""

from __future__ import annotations

import asyncio
import io

import grpc
import pytest
from PIL import Image

from facegen.v1 import common_pb2, gateway_pb2
from tests.fakes.grpc_upstreams import FakeUpstreams, png_bytes
from tests.integration.gateway.conftest import Gateway, GatewayFactory, stored_jobs
from tests.integration.gateway.support import check_stream, collect, job_request
from tests.unit.gateway.sample_images import jpeg_with_exif

pytestmark = pytest.mark.integration


async def test_a_job_completes_with_every_image_and_the_stages_in_order(
        gateway: Gateway, upstreams: FakeUpstreams) -> None:
    request = job_request(num_images=3, width=128, height=96, steps=4, seed=42,
                          swap_options=common_pb2.SwapOptions(mouth_mask=True))
    events = await collect(gateway.stub.Run(request))
    result = check_stream(events)
    assert (result.state, result.code, result.message) == (gateway_pb2.JOB_STATE_COMPLETED, "OK", "")
    assert [(img.index, img.width, img.height, img.seed) for img in result.images] == [
        (0, 128, 96, 42), (1, 128, 96, 43), (2, 128, 96, 44)]
    for image in result.images:
        assert image.url.startswith("http://storage.test/results/")
        assert image.storage_key.startswith("results/") and image.content_type == "image/png"
        assert image.face_swap_method == common_pb2.FACE_SWAP_METHOD_EXTERNAL_API
    assert events[-1].percent == 100
    assert [ev.denoise.step for ev in events if ev.HasField("denoise")] == [1, 2, 3, 4]
    stages = {ev.stage for ev in events}
    assert stages == {gateway_pb2.STAGE_QUEUED, gateway_pb2.STAGE_GENERATING, gateway_pb2.STAGE_STORING,
                      gateway_pb2.STAGE_SWAPPING, gateway_pb2.STAGE_FINALIZING, gateway_pb2.STAGE_TERMINAL}
    assert any(ev.remote.status == "IN_PROGRESS" and ev.remote.remote_job_id for ev in events)
    job_id = events[0].job_id
    generated = upstreams.generator.requests[-1]
    assert (generated.job_id, generated.steps, generated.num_images, generated.seed) == (job_id, 4, 3, 42)
    assert result.reference_key in upstreams.swapper.references
    swaps = sorted(upstreams.swapper.swaps, key=lambda call: call.image_index)
    assert [(call.job_id, call.image_index, call.reference_key) for call in swaps] == [
        (job_id, index, result.reference_key) for index in range(3)]
    assert all(call.options.mouth_mask for call in swaps)
    job = await gateway.stub.Get(gateway_pb2.GetRequest(job_id=job_id))
    assert (job.state, job.stage, job.last_seq, job.percent) == (
        gateway_pb2.JOB_STATE_COMPLETED, gateway_pb2.STAGE_TERMINAL, events[-1].seq, 100)
    assert job.result == result


async def test_the_reference_upload_runs_while_the_generator_works(
        gateway: Gateway, upstreams: FakeUpstreams, store_kind: str) -> None:
    if store_kind == "redis":
        pytest.skip("with a shared store the reference is stored before the job is queued (next test)")
    upload_gate = asyncio.Event()
    upstreams.swapper.script.put_gate = upload_gate
    run = asyncio.create_task(collect(gateway.stub.Run(job_request())))
    # Both calls are in flight at the same moment; only then does the upload finish.
    await upstreams.generator.wait_for(lambda g: g.calls >= 1)
    await upstreams.swapper.wait_for(lambda s: len(s.puts) >= 1)
    assert not upstreams.swapper.references
    upload_gate.set()
    result = check_stream(await asyncio.wait_for(run, 10))
    assert result.state == gateway_pb2.JOB_STATE_COMPLETED


async def test_with_a_shared_store_a_job_is_durable_before_it_is_queued(
        gateway: Gateway, upstreams: FakeUpstreams, store_kind: str) -> None:
    if store_kind == "memory":
        pytest.skip("one process keeps the images in memory and overlaps the upload with generation")
    upstreams.swapper.script.put_gate = upload_gate = asyncio.Event()
    submitting = asyncio.ensure_future(gateway.stub.Submit(job_request()))
    await upstreams.swapper.wait_for(lambda s: len(s.puts) == 1)
    assert not submitting.done() and upstreams.generator.calls == 0, "nothing is queued before the upload"
    upload_gate.set()
    submitted = await submitting
    template = await gateway.stub.Submit(job_request(target_image=png_bytes(40, 30)))
    for job_id in (submitted.job_id, template.job_id):
        check_stream(await collect(gateway.stub.Watch(gateway_pb2.WatchRequest(job_id=job_id))))
    generated = upstreams.generator.requests[-1]
    assert generated.HasField("seed") and 0 <= generated.seed < 2**32, "the seed is fixed at submit"
    template_swap = next(call for call in upstreams.swapper.swaps if call.job_id == template.job_id)
    assert template_swap.target_key == f"tmp/{template.job_id}/0.png" and template_swap.resumable


async def test_the_reference_face_leaves_the_gateway_rotated_and_without_metadata(
        gateway: Gateway, upstreams: FakeUpstreams) -> None:
    events = await collect(gateway.stub.Run(job_request(reference_image=jpeg_with_exif(80, 40))))
    result = check_stream(events)
    stored = upstreams.swapper.references[result.reference_key]
    assert b"SecretCam" not in stored
    with Image.open(io.BytesIO(stored)) as image:
        assert image.size == (40, 80)
        assert len(image.getexif()) == 0


async def test_one_failing_image_of_three_fails_the_job_but_keeps_the_others(
        gateway: Gateway, upstreams: FakeUpstreams) -> None:
    upstreams.swapper.script.fail = {1: (grpc.StatusCode.UNAVAILABLE, "storage put failed: 503")}
    result = check_stream(await collect(gateway.stub.Run(job_request(num_images=3))))
    assert (result.state, result.code) == (gateway_pb2.JOB_STATE_FAILED, "UNAVAILABLE")
    assert "1 of 3 images failed" in result.message and "storage put failed: 503" in result.message
    assert [img.index for img in result.images] == [0, 2]
    assert all(img.url for img in result.images)
    assert [(f.index, f.code) for f in result.failures] == [(1, "UNAVAILABLE")]


@pytest.mark.parametrize(("code", "after_steps", "expected"), [
    (grpc.StatusCode.RESOURCE_EXHAUSTED, 0, "RESOURCE_EXHAUSTED"),
    (grpc.StatusCode.INVALID_ARGUMENT, 0, "INVALID_ARGUMENT"),
    (grpc.StatusCode.UNAVAILABLE, 2, "UNAVAILABLE"),
    (grpc.StatusCode.INTERNAL, 1, "INTERNAL"),
])
async def test_a_generator_failure_ends_the_job_failed_with_its_code(
        gateway: Gateway, upstreams: FakeUpstreams, code: grpc.StatusCode, after_steps: int,
        expected: str) -> None:
    upstreams.generator.script.fail = code
    upstreams.generator.script.fail_after_steps = after_steps
    upstreams.generator.script.fail_message = "width 2048 is over this model's 1024"
    events = await collect(gateway.stub.Run(job_request(num_images=2)))
    result = check_stream(events)
    assert (result.state, result.code) == (gateway_pb2.JOB_STATE_FAILED, expected)
    assert [f.index for f in result.failures] == [0, 1] and not result.images
    assert [ev.denoise.step for ev in events if ev.HasField("denoise")] == list(range(1, after_steps + 1))
    if expected == "INTERNAL":
        assert result.message == "the generator failed (INTERNAL); the details are in its logs"
    else:
        assert result.message == "generator: width 2048 is over this model's 1024"
    assert not upstreams.swapper.swaps


async def test_a_swap_fallback_completes_the_job_and_says_why(
        gateway: Gateway, upstreams: FakeUpstreams) -> None:
    upstreams.swapper.script.fallback = {
        0: (common_pb2.FALLBACK_REASON_ENDPOINT_UNAVAILABLE, "endpoint answered 503 three times")}
    events = await collect(gateway.stub.Run(job_request(num_images=2)))
    result = check_stream(events)
    assert result.state == gateway_pb2.JOB_STATE_COMPLETED
    first, second = result.images
    assert first.face_swap_method == common_pb2.FACE_SWAP_METHOD_NONE
    assert first.fallback_reason == common_pb2.FALLBACK_REASON_ENDPOINT_UNAVAILABLE
    assert first.fallback_message == "endpoint answered 503 three times" and first.url
    assert second.face_swap_method == common_pb2.FACE_SWAP_METHOD_EXTERNAL_API
    assert second.fallback_reason == common_pb2.FALLBACK_REASON_UNSPECIFIED


async def test_template_mode_swaps_onto_the_sanitised_target_without_generating(
        gateway: Gateway, upstreams: FakeUpstreams) -> None:
    target = jpeg_with_exif(120, 60, orientation=6)
    result = check_stream(await collect(gateway.stub.Run(job_request(prompt="", target_image=target))))
    assert result.state == gateway_pb2.JOB_STATE_COMPLETED
    assert [(img.index, img.seed, img.width, img.height) for img in result.images] == [(0, -1, 60, 120)]
    assert not upstreams.generator.requests
    (call,) = upstreams.swapper.swaps
    assert b"SecretCam" not in call.target_image


async def test_a_reference_key_from_an_earlier_job_skips_the_upload(
        gateway: Gateway, upstreams: FakeUpstreams) -> None:
    first = check_stream(await collect(gateway.stub.Run(job_request())))
    uploads = len(upstreams.swapper.puts)
    second = check_stream(await collect(gateway.stub.Run(job_request(reference_key=first.reference_key))))
    assert second.state == gateway_pb2.JOB_STATE_COMPLETED
    assert second.reference_key == first.reference_key
    assert len(upstreams.swapper.puts) == uploads


@pytest.mark.parametrize(("fields", "code", "needle"), [
    ({"preview_every": 10}, grpc.StatusCode.INVALID_ARGUMENT,
     "preview_every=10 is out of range: 0 (no previews) to steps (4)"),
    ({"width": 1024}, grpc.StatusCode.INVALID_ARGUMENT, "width=1024 is not allowed: tiny-sd takes a multiple of 8 "
                                                        "from 64 to 512"),
    ({"steps": 60}, grpc.StatusCode.INVALID_ARGUMENT, "steps=60 is out of range: tiny-sd allows 1 to 50"),
    ({"model": "huge-xl"}, grpc.StatusCode.NOT_FOUND, "model 'huge-xl' is not in the catalog; available: tiny-sd"),
    ({"lora": common_pb2.LoraSpec(name="oil-paint")}, grpc.StatusCode.NOT_FOUND,
     "lora 'oil-paint' is not available for tiny-sd; available: tiny-style"),
    ({"reference_key": "not-a-key.png"}, grpc.StatusCode.INVALID_ARGUMENT, "reference_key must be a key"),
    ({"reference_key": "refs/" + "0" * 64 + ".png"}, grpc.StatusCode.NOT_FOUND, "not found"),
])
async def test_what_the_model_and_storage_refuse_is_refused_at_submit(
        gateway: Gateway, upstreams: FakeUpstreams, fields: dict[str, object], code: grpc.StatusCode,
        needle: str) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await gateway.stub.Submit(job_request(**fields))
    assert caught.value.code() == code
    assert needle in (caught.value.details() or "")
    assert not upstreams.generator.requests and await stored_jobs(gateway) == 0


@pytest.mark.parametrize(("fields", "needle"), [
    ({"prompt": ""}, "prompt must be 1 to 2000 characters"),
    ({"width": 100}, "width must be a multiple of 8 in 64..2048"),
    ({"steps": 101}, "steps must be 1..100"),
    ({"num_images": 5}, "num_images must be 1..4"),
    ({"reference_image": b"GIF89a not really"}, "reference_image is not a JPEG, PNG or WebP image"),
    ({"reference_image": b""}, "reference_image or reference_key is required"),
])
async def test_invalid_requests_are_refused_before_any_job_exists(
        gateway: Gateway, upstreams: FakeUpstreams, fields: dict[str, object], needle: str) -> None:
    for call in (gateway.stub.Submit, lambda r: collect(gateway.stub.Run(r))):
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await call(job_request(**fields))
        assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert needle in (caught.value.details() or "")
    assert not upstreams.generator.requests and not upstreams.swapper.puts
    assert await stored_jobs(gateway) == 0


async def test_the_same_idempotency_key_returns_the_same_job(gateway: Gateway, upstreams: FakeUpstreams) -> None:
    first = await gateway.stub.Submit(job_request(idempotency_key="order-17"))
    again = await gateway.stub.Submit(job_request(idempotency_key="order-17"))
    other = await gateway.stub.Submit(job_request(idempotency_key="order-18"))
    assert (first.created, again.created, other.created) == (True, False, True)
    assert again.job_id == first.job_id != other.job_id
    for job_id in (first.job_id, other.job_id):
        check_stream(await collect(gateway.stub.Watch(gateway_pb2.WatchRequest(job_id=job_id))))
    assert len(upstreams.generator.requests) == 2


async def test_an_idempotency_key_reused_with_another_request_is_refused_naming_the_job(
        gateway: Gateway, upstreams: FakeUpstreams) -> None:
    first = await gateway.stub.Submit(job_request(idempotency_key="order-19"))
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await gateway.stub.Submit(job_request(idempotency_key="order-19", prompt="something else"))
    assert caught.value.code() == grpc.StatusCode.ALREADY_EXISTS
    assert first.job_id in (caught.value.details() or "")
    check_stream(await collect(gateway.stub.Watch(gateway_pb2.WatchRequest(job_id=first.job_id))))
    assert len(upstreams.generator.requests) == 1


async def test_list_models_comes_from_the_generator(gateway: Gateway) -> None:
    response = await gateway.stub.ListModels(common_pb2.ListModelsRequest())
    assert [(m.name, m.max_size, m.is_default) for m in response.models] == [("tiny-sd", 512, True)]


async def test_unknown_jobs_are_not_found(gateway: Gateway) -> None:
    for call in (gateway.stub.Get(gateway_pb2.GetRequest(job_id="nope")),
                 gateway.stub.Cancel(gateway_pb2.CancelRequest(job_id="nope")),
                 collect(gateway.stub.Watch(gateway_pb2.WatchRequest(job_id="nope")))):
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await call
        assert caught.value.code() == grpc.StatusCode.NOT_FOUND
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await gateway.stub.Get(gateway_pb2.GetRequest())
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT


async def test_a_bearer_token_is_required_when_configured(start_gateway: GatewayFactory) -> None:
    gateway = await start_gateway(auth_token="t0ken-for-tests")
    for metadata in (None, (("authorization", "Bearer wrong"),), (("authorization", "t0ken-for-tests"),)):
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await gateway.stub.Submit(job_request(), metadata=metadata)
        assert caught.value.code() == grpc.StatusCode.UNAUTHENTICATED
        assert "t0ken" not in (caught.value.details() or "")
    good = (("authorization", "Bearer t0ken-for-tests"),)
    events = await collect(gateway.stub.Run(job_request(), metadata=good))
    assert check_stream(events).state == gateway_pb2.JOB_STATE_COMPLETED
    models = await gateway.stub.ListModels(common_pb2.ListModelsRequest(), metadata=good)
    assert models.models


async def test_previews_reach_live_watchers_but_are_not_kept_in_the_history(
        gateway: Gateway, upstreams: FakeUpstreams) -> None:
    upstreams.generator.script.step_delay = 0.01
    events = await collect(gateway.stub.Run(job_request(steps=4, preview_every=2)))
    check_stream(events)
    live = [(ev.denoise.step, bool(ev.denoise.preview_png)) for ev in events if ev.HasField("denoise")]
    assert live == [(1, False), (2, True), (3, False), (4, True)]
    replay = await collect(gateway.stub.Watch(gateway_pb2.WatchRequest(job_id=events[0].job_id)))
    assert [ev.seq for ev in replay] == [ev.seq for ev in events]
    assert not any(ev.denoise.preview_png for ev in replay)
