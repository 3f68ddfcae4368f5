"""Event ordering and status mapping of one job, driven by scripted in-process upstreams."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from typing import cast

import grpc
import pytest

from facegen.v1 import common_pb2, gateway_pb2, generator_pb2, swapper_pb2
from services.common.errors import DeadlineExceeded, Unavailable
from services.gateway.admission import AdmissionLimits
from services.gateway.memory_store import InMemoryJobStore
from services.gateway.orchestrator import JobRun, Services
from services.gateway.settings import Settings
from services.gateway.store import ImageCheckpoint, JobStore, Lease, NewJob
from services.gateway.upstreams import UpstreamFailed, Upstreams, translate
from services.gateway.validation import JobSpec, check_fields

pytestmark = pytest.mark.unit

Item = object  # an event to send, or an exception to raise


def gen_events(steps: int, images: int) -> list[Item]:
    items: list[Item] = [generator_pb2.GenerateEvent(queued=generator_pb2.QueuePosition(position=1))]
    items += [generator_pb2.GenerateEvent(step=generator_pb2.StepProgress(step=s, total_steps=steps))
              for s in range(1, steps + 1)]
    items += [generator_pb2.GenerateEvent(image=generator_pb2.GeneratedImage(
        index=i, png=b"png-%d" % i, width=64, height=64, seed=100 + i)) for i in range(images)]
    items.append(generator_pb2.GenerateEvent(done=generator_pb2.GenerateDone(model="m", duration_ms=5)))
    return items


def swap_events(index: int, method: int = common_pb2.FACE_SWAP_METHOD_EXTERNAL_API) -> list[Item]:
    return [
        swapper_pb2.SwapEvent(stored=swapper_pb2.SwapStored(key=f"tmp/{index}")),
        swapper_pb2.SwapEvent(submitted=swapper_pb2.SwapSubmitted(remote_job_id=f"r{index}", endpoint="ep")),
        swapper_pb2.SwapEvent(remote_status=common_pb2.RemoteJobStatus(status="IN_QUEUE")),
        swapper_pb2.SwapEvent(remote_status=common_pb2.RemoteJobStatus(
            status="COMPLETED", delay_time_ms=10, execution_time_ms=20)),
        swapper_pb2.SwapEvent(result=swapper_pb2.SwapResult(
            url=f"https://x/{index}.png", key=f"results/{index}.png", content_type="image/png",
            width=64, height=64, method=method)),  # type: ignore[arg-type]
    ]


@dataclass
class ScriptedUpstreams:
    generate_items: list[Item] = field(default_factory=lambda: gen_events(3, 2))
    swap_items: Callable[[int], list[Item]] = swap_events
    put_result: Item = "refs/key.png"
    hold_generate: asyncio.Event | None = None
    generate_cancelled: bool = False
    swap_requests: list[swapper_pb2.SwapRequest] = field(default_factory=list)
    generate_requests: list[generator_pb2.GenerateRequest] = field(default_factory=list)

    async def generate(self, request: generator_pb2.GenerateRequest) -> AsyncIterator[generator_pb2.GenerateEvent]:
        self.generate_requests.append(request)
        try:
            if self.hold_generate is not None:
                await self.hold_generate.wait()
            for item in self.generate_items:
                await asyncio.sleep(0)
                if isinstance(item, BaseException):
                    raise item
                yield cast(generator_pb2.GenerateEvent, item)
        except asyncio.CancelledError:
            self.generate_cancelled = True
            raise

    async def put_reference(self, job_id: str, image: bytes) -> str:
        await asyncio.sleep(0)
        if isinstance(self.put_result, BaseException):
            raise self.put_result
        return cast(str, self.put_result)

    async def swap(self, request: swapper_pb2.SwapRequest) -> AsyncIterator[swapper_pb2.SwapEvent]:
        self.swap_requests.append(request)
        for item in self.swap_items(request.image_index):
            await asyncio.sleep(0)
            if isinstance(item, BaseException):
                raise item
            yield cast(swapper_pb2.SwapEvent, item)


def settings() -> Settings:
    return Settings(listen="127.0.0.1:0", grace_seconds=0)


async def claimed(spec: JobSpec, images: dict[int, ImageCheckpoint] | None = None) -> tuple[JobStore, Lease]:
    """A memory store holding one job, claimed."""
    store = InMemoryJobStore(60, 10, 1000, AdmissionLimits(2, 2))
    first = gateway_pb2.JobEvent(job_id="job-1", seq=1, stage=gateway_pb2.STAGE_QUEUED, message="accepted")
    first.time.GetCurrentTime()
    await store.create(NewJob("job-1", spec, first, images=images or {}))
    lease = await store.claim("gw-test")
    assert lease is not None
    return store, lease


async def run_job(upstreams: ScriptedUpstreams, **request_fields: object) -> list[gateway_pb2.JobEvent]:
    values: dict[str, object] = {"prompt": "p", "num_images": 2, "reference_image": b"clean-bytes"}
    values.update(request_fields)
    spec = check_fields(gateway_pb2.JobRequest(**values))  # type: ignore[arg-type]
    if spec.reference_key == "":
        spec.reference_image = b"clean-bytes"
    if values.get("target_image"):
        spec.target_image = cast(bytes, values["target_image"])
    store, lease = await claimed(spec)
    run = JobRun(lease, Services(settings(), store, cast(Upstreams, upstreams)))
    await asyncio.wait_for(run.start(), 5)
    return [ev async for ev in store.watch("job-1", 0)]


def check_stream(events: list[gateway_pb2.JobEvent]) -> gateway_pb2.JobResult:
    """The invariants every job's stream keeps; returns the terminal result."""
    assert [ev.seq for ev in events] == list(range(1, len(events) + 1))
    assert events[0].stage == gateway_pb2.STAGE_QUEUED
    terminal = [ev for ev in events if ev.stage == gateway_pb2.STAGE_TERMINAL]
    assert len(terminal) == 1 and terminal[0] is events[-1]
    percents = [ev.percent for ev in events]
    assert percents == sorted(percents)
    assert all(ev.job_id == "job-1" and ev.time.seconds > 0 for ev in events)
    return events[-1].result


async def test_a_successful_job_streams_every_stage_in_order() -> None:
    upstreams = ScriptedUpstreams()
    events = await run_job(upstreams)
    result = check_stream(events)
    assert result.state == gateway_pb2.JOB_STATE_COMPLETED and result.code == "OK"
    assert [(img.index, img.seed, img.url) for img in result.images] == [
        (0, 100, "https://x/0.png"), (1, 101, "https://x/1.png")]
    assert result.reference_key == "refs/key.png"
    assert not result.failures
    assert events[-1].percent == 100
    steps = [(ev.denoise.step, ev.denoise.total_steps) for ev in events if ev.HasField("denoise")]
    assert steps == [(1, 3), (2, 3), (3, 3)]
    assert any(ev.queue_position == 1 for ev in events)
    remote = [ev.remote.status for ev in events if ev.remote.status]
    assert remote.count("COMPLETED") == 2
    stages = [ev.stage for ev in events]
    assert stages.index(gateway_pb2.STAGE_FINALIZING) == len(events) - 2
    # Each image event comes before the terminal one and carries the finished image.
    assert sorted(ev.image.index for ev in events if ev.HasField("image")) == [0, 1]
    assert {t.stage for t in result.timings} >= {gateway_pb2.STAGE_QUEUED, gateway_pb2.STAGE_GENERATING,
                                                   gateway_pb2.STAGE_SWAPPING, gateway_pb2.STAGE_FINALIZING}
    assert [r.reference_key for r in upstreams.swap_requests] == ["refs/key.png"] * 2
    assert all(r.deadline_ms == settings().swap_remote_deadline_ms for r in upstreams.swap_requests)


async def test_a_failed_swap_fails_the_job_but_lists_the_images_that_worked() -> None:
    def swaps(index: int) -> list[Item]:
        if index == 1:
            return [swapper_pb2.SwapEvent(stored=swapper_pb2.SwapStored(key="k")),
                    Unavailable("swapper: storage is unavailable")]
        return swap_events(index)

    result = check_stream(await run_job(ScriptedUpstreams(swap_items=swaps)))
    assert result.state == gateway_pb2.JOB_STATE_FAILED
    assert result.code == "UNAVAILABLE"
    assert "1 of 2 images failed" in result.message and "storage is unavailable" in result.message
    assert [img.index for img in result.images] == [0]
    assert [(f.index, f.code) for f in result.failures] == [(1, "UNAVAILABLE")]


async def test_a_fallback_is_a_success_that_says_why() -> None:
    def swaps(index: int) -> list[Item]:
        events = swap_events(index, method=common_pb2.FACE_SWAP_METHOD_NONE)
        result = cast(swapper_pb2.SwapEvent, events[-1]).result
        result.fallback_reason = common_pb2.FALLBACK_REASON_NO_FACE_FOUND
        result.fallback_message = "no face in the target"
        return events

    events = await run_job(ScriptedUpstreams(swap_items=swaps), num_images=1)
    result = check_stream(events)
    assert result.state == gateway_pb2.JOB_STATE_COMPLETED
    image = result.images[0]
    assert image.face_swap_method == common_pb2.FACE_SWAP_METHOD_NONE
    assert image.fallback_reason == common_pb2.FALLBACK_REASON_NO_FACE_FOUND
    assert any("without face swap (no_face_found: no face in the target)" in ev.message for ev in events)


@pytest.mark.parametrize(("error", "code", "needle"), [
    (Unavailable("the generator cannot be reached"), "UNAVAILABLE", "cannot be reached"),
    (DeadlineExceeded("the generator did not finish within 1 s"), "DEADLINE_EXCEEDED", "within 1 s"),
    (UpstreamFailed("the generator failed (INTERNAL); the details are in its logs"), "INTERNAL", "its logs"),
    (RuntimeError("secret detail"), "INTERNAL", "internal error (incident "),
])
async def test_generator_failures_end_in_one_failed_event_with_the_mapped_code(
        error: Exception, code: str, needle: str) -> None:
    upstreams = ScriptedUpstreams(generate_items=[*gen_events(2, 0)[:2], error])
    result = check_stream(await run_job(upstreams))
    assert (result.state, result.code) == (gateway_pb2.JOB_STATE_FAILED, code)
    assert needle in result.message
    assert "secret detail" not in result.message
    assert [(f.index, f.code) for f in result.failures] == [(0, code), (1, code)]


async def test_a_generator_that_fails_after_one_image_still_lists_that_image() -> None:
    items = [*gen_events(2, 1)[:-1], Unavailable("generator: worker lost")]
    result = check_stream(await run_job(ScriptedUpstreams(generate_items=items)))
    assert (result.state, result.code) == (gateway_pb2.JOB_STATE_FAILED, "UNAVAILABLE")
    assert [img.index for img in result.images] == [0]
    assert [f.index for f in result.failures] == [1]


async def test_a_generator_that_sends_too_few_images_fails_the_missing_ones() -> None:
    result = check_stream(await run_job(ScriptedUpstreams(generate_items=gen_events(2, 1))))
    assert result.state == gateway_pb2.JOB_STATE_FAILED
    assert "without image 1" in result.message
    assert [img.index for img in result.images] == [0]


async def test_a_failed_reference_upload_stops_generation_at_once() -> None:
    hold = asyncio.Event()
    upstreams = ScriptedUpstreams(put_result=Unavailable("swapper: storage is down"), hold_generate=hold)
    result = check_stream(await run_job(upstreams))
    assert (result.state, result.code) == (gateway_pb2.JOB_STATE_FAILED, "UNAVAILABLE")
    assert "storage is down" in result.message
    assert upstreams.generate_cancelled


async def test_template_mode_swaps_the_target_without_generating() -> None:
    upstreams = ScriptedUpstreams(generate_items=[RuntimeError("must not generate")])
    events = await run_job(upstreams, prompt="", target_image=b"target-bytes")
    result = check_stream(events)
    assert result.state == gateway_pb2.JOB_STATE_COMPLETED
    assert [(img.index, img.seed) for img in result.images] == [(0, -1)]
    assert upstreams.swap_requests[0].target_image == b"target-bytes"
    assert not any(ev.stage == gateway_pb2.STAGE_GENERATING for ev in events)


async def test_a_reference_key_skips_the_upload() -> None:
    upstreams = ScriptedUpstreams(put_result=RuntimeError("must not upload"))
    result = check_stream(await run_job(upstreams, reference_key="refs/earlier.png"))
    assert result.state == gateway_pb2.JOB_STATE_COMPLETED
    assert result.reference_key == "refs/earlier.png"


async def test_a_job_cancelled_before_it_ran_still_ends_with_one_cancelled_event() -> None:
    spec = check_fields(gateway_pb2.JobRequest(prompt="p", reference_key="refs/k.png"))
    store, lease = await claimed(spec)
    run = JobRun(lease, Services(settings(), store, cast(Upstreams, ScriptedUpstreams())))
    task = run.start()
    run.cancel("cancelled by a test")
    await asyncio.wait_for(task, 5)
    events = [ev async for ev in store.watch("job-1", 0)]
    assert [ev.seq for ev in events] == [1, 2]
    result = events[-1].result
    assert (result.state, result.code, result.message) == (
        gateway_pb2.JOB_STATE_CANCELLED, "CANCELLED", "cancelled by a test")


async def test_the_stage_never_goes_backwards_while_images_are_stored_and_swapped() -> None:
    events = await run_job(ScriptedUpstreams(generate_items=gen_events(2, 3)), num_images=3)
    check_stream(events)
    stages = [ev.stage for ev in events]
    assert stages == sorted(stages), [gateway_pb2.Stage.Name(stage) for stage in stages]
    assert sum(ev.message.startswith("image") and "stored" in ev.message for ev in events) == 3


async def test_a_resumed_job_keeps_finished_images_swaps_stored_ones_and_regenerates_only_the_rest() -> None:
    request = gateway_pb2.JobRequest(prompt="p", num_images=4, seed=100, reference_key="refs/k.png")
    spec = check_fields(request)
    done = gateway_pb2.ImageResult(index=0, url="https://x/0.png", seed=100)
    images = {0: ImageCheckpoint(stored_key="tmp/0", remote_job_id="r0", endpoint="ep", result=done),
              1: ImageCheckpoint(stored_key="tmp/1", remote_job_id="r1", endpoint="ep")}
    store, first = await claimed(spec, images)
    await store.release(first)
    lease = await store.claim("gw-next")
    assert lease is not None and lease.resumed
    # The generator is asked for images 2..3 only: its image i is the job's image 2 + i.
    upstreams = ScriptedUpstreams(generate_items=gen_events(2, 2))
    await asyncio.wait_for(JobRun(lease, Services(settings(), store, cast(Upstreams, upstreams))).start(), 5)
    events = [ev async for ev in store.watch("job-1", 0)]
    result = check_stream(events)
    assert result.state == gateway_pb2.JOB_STATE_COMPLETED
    assert [img.index for img in result.images] == [0, 1, 2, 3]
    assert result.images[0] == done, "a finished image is not touched"
    (generated,) = upstreams.generate_requests
    assert (generated.seed, generated.num_images) == (102, 2)
    swapped = sorted((r.image_index, r.target_key, bool(r.target_image)) for r in upstreams.swap_requests)
    assert swapped == [(1, "tmp/1", False), (2, "", True), (3, "", True)]
    resumed = [ev for ev in events if ev.resumed]
    assert len(resumed) == 1 and "gw-next" in resumed[0].message and "1 of 4 images finished" in resumed[0].message


def rpc_error(code: grpc.StatusCode, details: str) -> grpc.aio.AioRpcError:
    return grpc.aio.AioRpcError(code, grpc.aio.Metadata(), grpc.aio.Metadata(), details=details)


@pytest.mark.parametrize(("code", "details", "elapsed", "expected", "needle"), [
    (grpc.StatusCode.UNAVAILABLE, "storage down", 0, "UNAVAILABLE", "swapper: storage down"),
    (grpc.StatusCode.INVALID_ARGUMENT, "width over 1024", 0, "INVALID_ARGUMENT", "width over 1024"),
    (grpc.StatusCode.RESOURCE_EXHAUSTED, "queue full", 0, "RESOURCE_EXHAUSTED", "queue full"),
    (grpc.StatusCode.NOT_FOUND, "reference gone", 0, "NOT_FOUND", "reference gone"),
    (grpc.StatusCode.DEADLINE_EXCEEDED, "Deadline Exceeded", 10, "DEADLINE_EXCEEDED", "within 10 s (SETTING)"),
    (grpc.StatusCode.DEADLINE_EXCEEDED, "remote deadline", 1, "DEADLINE_EXCEEDED", "swapper: remote deadline"),
    (grpc.StatusCode.CANCELLED, "shutting down", 0, "UNAVAILABLE", "ended the call early"),
    (grpc.StatusCode.INTERNAL, "stack trace /srv/x.py", 0, "INTERNAL", "the swapper failed (INTERNAL)"),
    (grpc.StatusCode.UNKNOWN, "boom", 0, "INTERNAL", "the swapper failed (UNKNOWN)"),
    (grpc.StatusCode.INTERNAL, "internal error (incident 3f9a1c20be7d)", 0, "INTERNAL",
     "the swapper failed (INTERNAL, incident 3f9a1c20be7d); the details are in its logs"),
])
def test_upstream_status_codes_map_to_job_codes(code: grpc.StatusCode, details: str, elapsed: float,
                                                expected: str, needle: str) -> None:
    from services.common.errors import status_for
    exc = translate(rpc_error(code, details), "swapper", 10, time.monotonic() - elapsed, "SETTING")
    mapped, message = status_for(exc)
    assert mapped.name == expected
    assert needle in message
    if code in (grpc.StatusCode.INTERNAL, grpc.StatusCode.UNKNOWN):
        assert details not in message
