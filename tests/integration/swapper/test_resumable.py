"""Resumable swaps, CancelSwap, PutTarget and CheckReference: a real redis-server, the fake RunPod, real servers.

A gateway that dies while its Swap call is in flight leaves the call
cancelled; another gateway then calls Swap again for the same job and image.
The fake RunPod counts every /run and /cancel: a resumable swap's job is
submitted once, whoever calls.
"""

from __future__ import annotations

import asyncio

import grpc
import pytest
import redis

from facegen.v1 import common_pb2, swapper_pb2
from services.stack.runpod_emulator import Fault, JobPlan
from tests.integration.swapper.harness import PRIMARY, Harness, MakeSwapper, image_bytes, kinds, result_of, until

pytestmark = pytest.mark.integration


def record(url: str, job_id: str, index: int = 0) -> dict[str, str]:
    """The swap's record as Redis holds it."""
    client = redis.Redis.from_url(url, decode_responses=True)
    try:
        return dict(client.hgetall(f"facegen:swap:{{{job_id}}}:{index}"))
    finally:
        client.close()


def resumable(harness: Harness, reference: str, job_id: str, **fields: object) -> swapper_pb2.SwapRequest:
    request = harness.request(reference, job_id=job_id, target=image_bytes(color=(1, 2, 3)))
    request.resumable = True
    for name, value in fields.items():
        setattr(request, name, value)
    return request


async def leave_after(harness: Harness, request: swapper_pb2.SwapRequest, kind: str) -> list[str]:
    """Starts a Swap, hangs up after its first ``kind`` event, and waits until the swapper has let go of it."""
    call = harness.stub.Swap(request)
    seen = []
    async for event in call:
        seen.append(str(event.WhichOneof("event")))
        if seen[-1] == kind:
            break
    call.cancel()
    await until(lambda: harness.metric("facegen_swapper_swaps_in_flight") == 0, 10, "the first call to end")
    return seen


async def test_a_second_swap_follows_the_job_the_first_call_submitted(make_swapper: MakeSwapper,
                                                                      redis_url: str) -> None:
    harness = await make_swapper(REDIS_URL=redis_url)
    harness.fake.endpoint(PRIMARY).plan = JobPlan(queue_s=0.1, run_s=1.0)
    reference = await harness.put_reference()
    assert await leave_after(harness, resumable(harness, reference, "res-1"), "submitted") == \
        ["stored", "submitted"]
    kept = record(redis_url, "res-1")
    [job] = harness.fake.jobs()
    assert kept["state"] == "submitted" and kept["remote_job_id"] == job.id and kept["endpoint"] == PRIMARY
    assert harness.objects("tmp/") == [kept["target_key"]], "the stored target stays for the next call"
    assert harness.fake.count("cancel") == 0 and job.cancelled_at is None
    client = redis.Redis.from_url(redis_url)
    ttl_ms = client.pttl("facegen:swap:{res-1}:0")
    client.close()
    assert 0 < ttl_ms <= (5 + 60) * 1000, "the record expires a grace period after the swap's deadline"

    harness.baseline_tasks = set(asyncio.all_tasks())
    events = [event async for event in harness.stub.Swap(resumable(harness, reference, "res-1"), timeout=20)]
    assert kinds(events)[:2] == ["stored", "submitted"]
    assert events[0].stored.key == kept["target_key"], "the target is not stored again"
    assert events[1].submitted.resumed and events[1].submitted.remote_job_id == job.id
    result = result_of(events)
    assert result.method == common_pb2.FACE_SWAP_METHOD_EXTERNAL_API, result.fallback_message
    assert harness.fake.count("run") == 1
    assert harness.fake.count("cancel") == 0
    assert record(redis_url, "res-1") == {}, "a finished swap forgets its record"
    await harness.assert_quiet()


async def test_a_caller_gone_while_run_is_in_flight_is_resumed(make_swapper: MakeSwapper, redis_url: str) -> None:
    harness = await make_swapper(REDIS_URL=redis_url)
    endpoint = harness.fake.endpoint(PRIMARY)
    endpoint.script("run", Fault.delay(0.8), 1)
    endpoint.plan = JobPlan(run_s=0.5)
    reference = await harness.put_reference()
    call = harness.stub.Swap(resumable(harness, reference, "res-2"))
    async for event in call:
        assert event.WhichOneof("event") == "stored"
        break
    await until(lambda: harness.fake.count("run") == 1, 5, "the /run request")
    assert record(redis_url, "res-2")["state"] == "submitting"
    call.cancel()
    # The next call comes at once, while the first call's /run is still in flight: it waits for its outcome.
    events = [event async for event in harness.stub.Swap(resumable(harness, reference, "res-2"), timeout=20)]
    [job] = harness.fake.jobs()
    submitted = [e.submitted for e in events if e.WhichOneof("event") == "submitted"]
    assert [(s.remote_job_id, s.resumed) for s in submitted] == [(job.id, True)]
    assert result_of(events).method == common_pb2.FACE_SWAP_METHOD_EXTERNAL_API
    assert harness.fake.count("run") == 1 and harness.fake.count("cancel") == 0
    await until(lambda: harness.metric("facegen_swapper_swaps_in_flight") == 0, 5, "both calls to end")
    assert harness.objects("tmp/") == [] and record(redis_url, "res-2") == {}


async def test_an_unknown_submission_is_never_sent_again(make_swapper: MakeSwapper, redis_url: str) -> None:
    harness = await make_swapper(REDIS_URL=redis_url, FACE_SWAP_HTTP_TIMEOUT_SECONDS="0.5")
    reference = await harness.put_reference()
    # What a swapper killed during its /run leaves behind.
    client = redis.Redis.from_url(redis_url)
    client.hset("facegen:swap:{res-3}:0", "state", "submitting")
    client.close()
    result = result_of(await harness.swap(resumable(harness, reference, "res-3")))
    assert result.fallback_reason == common_pb2.FALLBACK_REASON_ENDPOINT_UNAVAILABLE
    assert "the outcome of an earlier submission is unknown, so it is not submitted again" in \
        result.fallback_message
    assert harness.fake.count("run") == 0
    assert record(redis_url, "res-3") == {} and harness.objects("tmp/") == []


async def test_cancel_swap_sends_one_cancel_and_ends_the_swap_for_good(make_swapper: MakeSwapper,
                                                                        redis_url: str) -> None:
    harness = await make_swapper(REDIS_URL=redis_url)
    # The job does not fetch its inputs: CancelSwap deletes them while it runs.
    harness.fake.endpoint(PRIMARY).plan = JobPlan(run_s=30, fetch_inputs=False)
    reference = await harness.put_reference()
    await leave_after(harness, resumable(harness, reference, "res-4", image_index=2), "submitted")
    cancel = swapper_pb2.CancelSwapRequest(job_id="res-4", image_index=2)
    answers = await asyncio.gather(*(harness.stub.CancelSwap(cancel) for _ in range(3)))
    assert sorted(answer.remote_cancelled for answer in answers) == [False, False, True]
    assert harness.fake.count("cancel") == 1
    assert harness.fake.jobs()[0].cancelled_at is not None
    assert harness.objects("tmp/") == []
    assert (await harness.stub.CancelSwap(cancel)).remote_cancelled is False
    # A Swap of the cancelled swap (a gateway that had not heard) submits nothing.
    result = result_of(await harness.swap(resumable(harness, reference, "res-4", image_index=2)))
    assert result.fallback_reason == common_pb2.FALLBACK_REASON_CANCELLED
    assert harness.fake.count("run") == 1 and harness.fake.count("cancel") == 1


async def test_cancel_swap_before_the_swap_arrives_keeps_it_from_submitting(make_swapper: MakeSwapper,
                                                                           redis_url: str) -> None:
    # A gateway cancels a job while its Swap call is still on its way: the CancelSwap may come first.
    harness = await make_swapper(REDIS_URL=redis_url)
    reference = await harness.put_reference()
    answer = await harness.stub.CancelSwap(swapper_pb2.CancelSwapRequest(job_id="res-early", image_index=1))
    assert answer.remote_cancelled is False
    assert record(redis_url, "res-early", 1) == {"state": "cancelled"}
    ttl_ms = redis.Redis.from_url(redis_url).pttl("facegen:swap:{res-early}:1")
    assert ttl_ms > 0, "a tombstone made without a record expires"
    result = result_of(await harness.swap(resumable(harness, reference, "res-early", image_index=1)))
    assert result.fallback_reason == common_pb2.FALLBACK_REASON_CANCELLED
    assert harness.fake.count("run") == 0


async def test_cancel_swap_during_run_cancels_the_job_as_it_is_accepted(make_swapper: MakeSwapper,
                                                                         redis_url: str) -> None:
    harness = await make_swapper(REDIS_URL=redis_url)
    harness.fake.endpoint(PRIMARY).script("run", Fault.delay(0.6), 1)
    harness.fake.endpoint(PRIMARY).plan = JobPlan(run_s=30, fetch_inputs=False)
    reference = await harness.put_reference()
    swapping = asyncio.ensure_future(harness.swap(resumable(harness, reference, "res-5")))
    await until(lambda: harness.fake.count("run") == 1, 5, "the /run request")
    answer = await harness.stub.CancelSwap(swapper_pb2.CancelSwapRequest(job_id="res-5"))
    assert answer.remote_cancelled is False, "no job was known yet"
    result = result_of(await swapping)
    assert result.fallback_reason == common_pb2.FALLBACK_REASON_CANCELLED
    assert harness.fake.count("cancel") == 1 and harness.fake.jobs()[0].cancelled_at is not None
    assert record(redis_url, "res-5") == {"state": "cancelled"}, "the tombstone outlives the call"
    again = result_of(await harness.swap(resumable(harness, reference, "res-5")))
    assert again.fallback_reason == common_pb2.FALLBACK_REASON_CANCELLED
    assert harness.fake.count("run") == 1


async def test_a_non_resumable_swap_whose_caller_left_still_cancels_its_job(make_swapper: MakeSwapper,
                                                                            redis_url: str) -> None:
    harness = await make_swapper(REDIS_URL=redis_url)
    harness.fake.endpoint(PRIMARY).plan = JobPlan(run_s=30)
    reference = await harness.put_reference()
    await leave_after(harness, harness.request(reference, job_id="plain"), "submitted")
    await until(lambda: harness.fake.count("cancel") == 1, 5, "the /cancel")
    assert harness.objects("tmp/") == [] and record(redis_url, "plain") == {}


async def test_resumable_swaps_need_redis(make_swapper: MakeSwapper) -> None:
    harness = await make_swapper()
    reference = await harness.put_reference()
    for call in (harness.swap(resumable(harness, reference, "res-6")),
                 harness.stub.CancelSwap(swapper_pb2.CancelSwapRequest(job_id="res-6"))):
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await call
        assert caught.value.code() == grpc.StatusCode.FAILED_PRECONDITION
        assert "REDIS_URL" in (caught.value.details() or "")
    assert harness.fake.count("run") == 0 and harness.objects("tmp/") == []


async def test_redis_down_refuses_a_resumable_swap_before_anything_is_submitted(make_swapper: MakeSwapper,
                                                                                 tmp_path) -> None:  # type: ignore[no-untyped-def]
    from tests.redis_server import RedisServer

    with RedisServer(tmp_path, appendonly=False) as server:
        harness = await make_swapper(REDIS_URL=server.url)
    reference = await harness.put_reference()
    started = asyncio.get_running_loop().time()
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await harness.swap(resumable(harness, reference, "res-7"))
    assert caught.value.code() == grpc.StatusCode.UNAVAILABLE
    assert "Redis" in (caught.value.details() or "")
    assert asyncio.get_running_loop().time() - started < 5, "the outage is reported at once, not waited out"
    assert harness.fake.count("run") == 0 and harness.objects("tmp/") == []
    plain = result_of(await harness.swap(harness.request(reference)))
    assert plain.method == common_pb2.FACE_SWAP_METHOD_EXTERNAL_API, "swaps that are not resumable go on"


async def test_put_target_then_swap_by_target_key(make_swapper: MakeSwapper, s3_server) -> None:  # type: ignore[no-untyped-def]
    harness = await make_swapper()
    reference = await harness.put_reference()
    target = image_bytes(size=(50, 30), color=(9, 8, 7))
    put = await harness.stub.PutTarget(swapper_pb2.PutTargetRequest(job_id="tk", image_index=1, image=target))
    assert put.key.startswith("tmp/tk/1-") and harness.get(put.key) == target
    uploads = s3_server.counts.get("PUT tmp/", 0)
    request = harness.request(reference, job_id="tk", index=1, target=b"")
    request.target_key = put.key
    events = await harness.swap(request)
    assert events[0].stored.key == put.key
    result = result_of(events)
    assert result.method == common_pb2.FACE_SWAP_METHOD_EXTERNAL_API and (result.width, result.height) == (50, 30)
    assert s3_server.counts.get("PUT tmp/", 0) == uploads, "the target is not uploaded again"
    await harness.assert_quiet()

    missing = harness.request(reference, job_id="tk", index=1, target=b"")
    missing.target_key = put.key
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await harness.swap(missing)
    assert caught.value.code() == grpc.StatusCode.NOT_FOUND and "target_key" in (caught.value.details() or "")


@pytest.mark.parametrize(("job_id", "index", "key", "target"), [
    ("tk", 2, "tmp/tk/1-0123abcd-target.png", b""),
    ("tk", 1, "tmp/other/1-0123abcd-target.png", b""),
    ("tk", 1, "results/tk/1-original.png", b""),
    ("tk", 1, "tmp/tk/1-0123abcd-target.png", image_bytes()),
])
async def test_malformed_target_keys_are_invalid_argument(make_swapper: MakeSwapper, job_id: str, index: int,
                                                          key: str, target: bytes) -> None:
    harness = await make_swapper()
    request = harness.request("", job_id=job_id, index=index, target=target)
    request.target_key = key
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await harness.swap(request)
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "target" in (caught.value.details() or "")


async def test_check_reference(make_swapper: MakeSwapper) -> None:
    harness = await make_swapper()
    key = await harness.put_reference()
    await harness.stub.CheckReference(swapper_pb2.CheckReferenceRequest(job_id="cr", key=key))
    for bad, code in (("refs/" + "0" * 64 + ".png", grpc.StatusCode.NOT_FOUND),
                      ("tmp/cr/0-0123abcd-target.png", grpc.StatusCode.INVALID_ARGUMENT),
                      ("", grpc.StatusCode.INVALID_ARGUMENT)):
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await harness.stub.CheckReference(swapper_pb2.CheckReferenceRequest(job_id="cr", key=bad))
        assert caught.value.code() == code, bad
