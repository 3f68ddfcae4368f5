"""Every failure class ends in a fallback with the right reason, within the deadline, cleanly.

Each case scripts the fake RunPod, runs one Swap through the real gRPC
server, and checks: the original image is returned with the expected
reason (or the swap succeeds after retries), it ends within the deadline
(plus the time to cancel and store), ``/cancel`` was sent exactly when the
remote job was abandoned, no temporary object is left, and nothing keeps
running.
"""

from __future__ import annotations

import base64
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import pytest

from facegen.v1 import common_pb2
from services.stack.runpod_emulator import Fault, JobPlan, png_bytes
from services.stack.runpod_emulator import RunPodEmulator as FakeRunPod
from tests.integration.swapper.harness import PRIMARY, MakeSwapper, result_of

pytestmark = pytest.mark.integration

R = common_pb2
OK = 0  # no fallback: the swap must succeed
DEADLINE_S = 2.5
# Cancelling, storing the original and answering may follow the deadline.
SLACK_S = 1.5


@dataclass
class Case:
    name: str
    script: Callable[[FakeRunPod], None]
    reason: int
    cancels: int = 0
    runs: int | None = 1
    env: dict[str, str | None] = field(default_factory=dict)
    message: str = ""
    min_elapsed_s: float = 0.0


def plan(**kwargs: object) -> Callable[[FakeRunPod], None]:
    def apply(fake: FakeRunPod) -> None:
        fake.endpoint(PRIMARY).plan = JobPlan(**kwargs)  # type: ignore[arg-type]
    return apply


def faults(route: str, *scripted: tuple[Fault, int | None], **plan_kwargs: object) -> Callable[[FakeRunPod], None]:
    def apply(fake: FakeRunPod) -> None:
        endpoint = fake.endpoint(PRIMARY)
        endpoint.plan = JobPlan(**plan_kwargs)  # type: ignore[arg-type]
        for fault, times in scripted:
            endpoint.script(route, fault, times)
    return apply


def nothing(_fake: FakeRunPod) -> None:
    pass


PNG_B64 = base64.b64encode(png_bytes((20, 20))).decode()

CASES = [
    # --- submit ---
    Case("connection refused", nothing, R.FALLBACK_REASON_ENDPOINT_UNAVAILABLE, runs=0,
         env={"RUNPOD_API_BASE": "http://127.0.0.1:9/v2"}, message="connection refused"),
    Case("submit 503 every time", faults("run", (Fault.http(503), None)),
         R.FALLBACK_REASON_ENDPOINT_UNAVAILABLE, runs=3, message="HTTP 503"),
    Case("submit 502 then accepted", faults("run", (Fault.http(502), 2)), OK, runs=3),
    Case("submit reset: outcome unknown, not resubmitted", faults("run", (Fault.reset(), 1)),
         R.FALLBACK_REASON_ENDPOINT_UNAVAILABLE, runs=1, message="not submitted again"),
    Case("submit timeout: outcome unknown, not resubmitted", faults("run", (Fault.hang(10), 1)),
         R.FALLBACK_REASON_ENDPOINT_UNAVAILABLE, runs=1, message="not submitted again",
         env={"FACE_SWAP_HTTP_TIMEOUT_SECONDS": "0.5"}),
    Case("submit 504 is ambiguous: not resubmitted", faults("run", (Fault.http(504), 1)),
         R.FALLBACK_REASON_ENDPOINT_UNAVAILABLE, runs=1, message="not submitted again"),
    Case("submit 429 honours Retry-After", faults("run", (Fault.http(429, retry_after="0.6"), 1)), OK,
         runs=2, min_elapsed_s=0.6),
    Case("submit 429 until the deadline", faults("run", (Fault.http(429, retry_after="1"), None)),
         R.FALLBACK_REASON_RATE_LIMITED, runs=None, message="429"),
    Case("submit 401: key rejected, no retry", faults("run", (Fault.http(401), None)),
         R.FALLBACK_REASON_KEY_REJECTED, runs=1, message="the RunPod API key was rejected"),
    Case("submit 403: key rejected, no retry", faults("run", (Fault.http(403), None)),
         R.FALLBACK_REASON_KEY_REJECTED, runs=1, message="the RunPod API key was rejected"),
    Case("wrong key", nothing, R.FALLBACK_REASON_KEY_REJECTED, runs=1,
         env={"RUNPOD_API_KEY": "rpa_WRONGKEY0123456789abcdefghijkl"}, message="the RunPod API key was rejected"),
    Case("submit answers non-JSON", faults("run", (Fault.non_json(200), 1)),
         R.FALLBACK_REASON_PROTOCOL_ERROR, runs=1, message="not JSON"),
    Case("submit answers no job id", faults("run", (Fault.json_body({"status": "IN_QUEUE"}), 1)),
         R.FALLBACK_REASON_PROTOCOL_ERROR, runs=1, message="without a job id"),
    Case("unknown endpoint", nothing, R.FALLBACK_REASON_ENDPOINT_UNAVAILABLE, runs=1,
         env={"FACE_SWAP_ENDPOINT": "ep-missing"}, message="404"),
    # --- status ---
    Case("status 500 then fine", faults("status", (Fault.http(500), 2)), OK),
    Case("status reset then fine", faults("status", (Fault.reset(), 1)), OK),
    Case("status 429 honours Retry-After", faults("status", (Fault.http(429, retry_after="0.5"), 1)), OK,
         min_elapsed_s=0.5),
    Case("status 404: job expired, no cancel", faults("status", (Fault.http(404), None)),
         R.FALLBACK_REASON_JOB_EXPIRED, message="404"),
    Case("status 401: key rejected", faults("status", (Fault.http(401), None)),
         R.FALLBACK_REASON_KEY_REJECTED, message="the RunPod API key was rejected"),
    Case("status non-JSON: protocol error, job cancelled", faults("status", (Fault.non_json(200), None)),
         R.FALLBACK_REASON_PROTOCOL_ERROR, cancels=1, message="not JSON"),
    Case("unknown status: protocol error, job cancelled",
         faults("status", (Fault.json_body({"id": "x", "status": "PAUSED"}), None)),
         R.FALLBACK_REASON_PROTOCOL_ERROR, cancels=1, message="PAUSED"),
    Case("status 503 until the deadline", faults("status", (Fault.http(503), None), run_s=10),
         R.FALLBACK_REASON_ENDPOINT_UNAVAILABLE, cancels=1, message="deadline"),
    Case("status hangs until the deadline", faults("status", (Fault.hang(30), None), run_s=10),
         R.FALLBACK_REASON_ENDPOINT_UNAVAILABLE, cancels=1, message="deadline"),
    Case("status 429 until the deadline", faults("status", (Fault.http(429, retry_after="0.3"), None), run_s=10),
         R.FALLBACK_REASON_RATE_LIMITED, cancels=1, message="429"),
    # --- remote outcomes ---
    Case("job runs past our deadline", plan(run_s=10), R.FALLBACK_REASON_TIMED_OUT, cancels=1,
         message="deadline"),
    Case("job stuck in queue past our deadline", plan(queue_s=10), R.FALLBACK_REASON_TIMED_OUT, cancels=1),
    Case("FAILED", plan(final="FAILED", error="RuntimeError: CUDA error"), R.FALLBACK_REASON_REMOTE_FAILED,
         message="CUDA error"),
    Case("FAILED: no face", plan(final="FAILED", error="No face detected in source image"),
         R.FALLBACK_REASON_NO_FACE_FOUND, message="No face detected"),
    Case("CANCELLED by the endpoint", plan(final="CANCELLED"), R.FALLBACK_REASON_CANCELLED),
    Case("TIMED_OUT remotely", plan(final="TIMED_OUT"), R.FALLBACK_REASON_TIMED_OUT, message="TIMED_OUT"),
    Case("COMPLETED with success false", plan(output={"success": False, "error": "model crashed"}),
         R.FALLBACK_REASON_REMOTE_FAILED, message="model crashed"),
    Case("COMPLETED with success false: no face", plan(output={"success": False, "error": "no face found"}),
         R.FALLBACK_REASON_NO_FACE_FOUND),
    Case("COMPLETED with garbage base64", plan(output={"result": "@@@not-base64@@@"}),
         R.FALLBACK_REASON_UNDECODABLE_RESULT, message="base64"),
    Case("COMPLETED with a non-image", plan(output={"result": base64.b64encode(b"GIF89a....").decode()}),
         R.FALLBACK_REASON_UNDECODABLE_RESULT),
    Case("COMPLETED with a truncated image",
         plan(output={"result": base64.b64encode(png_bytes((50, 50))[:70]).decode()}),
         R.FALLBACK_REASON_UNDECODABLE_RESULT, message="truncated"),
    Case("COMPLETED with an oversized image", plan(output={"result": PNG_B64}),
         R.FALLBACK_REASON_UNDECODABLE_RESULT, env={"FACE_SWAP_RESULT_MAX_SIDE": "16"}, message="20x20"),
    Case("COMPLETED without output", plan(output=None), R.FALLBACK_REASON_PROTOCOL_ERROR, message="output"),
    Case("COMPLETED with a data URI", plan(output={"result": "data:image/png;base64," + PNG_B64}), OK),
    Case("COMPLETED with a bare string", plan(output=PNG_B64), OK),
]


@pytest.mark.parametrize("case", CASES, ids=[case.name for case in CASES])
async def test_failure_class(make_swapper: MakeSwapper, case: Case) -> None:
    harness = await make_swapper(**case.env)
    case.script(harness.fake)
    reference = await harness.put_reference()
    started = time.monotonic()
    events = await harness.swap(harness.request(reference, job_id="fault", deadline_ms=int(DEADLINE_S * 1000)))
    elapsed = time.monotonic() - started
    result = result_of(events)

    if case.reason == OK:
        assert result.method == common_pb2.FACE_SWAP_METHOD_EXTERNAL_API, result.fallback_message
        assert result.key.endswith("-swapped.png")
    else:
        assert common_pb2.FallbackReason.Name(result.fallback_reason) == common_pb2.FallbackReason.Name(case.reason)
        assert result.method == common_pb2.FACE_SWAP_METHOD_NONE
        assert result.key == "results/fault/0-original.png"
        assert result.content_type == "image/png"
        assert result.fallback_message
        assert case.message in result.fallback_message
    assert elapsed < DEADLINE_S + SLACK_S, f"took {elapsed:.2f} s"
    assert elapsed >= case.min_elapsed_s
    assert harness.fake.count("cancel") == case.cancels
    if case.runs is not None:
        assert harness.fake.count("run") == case.runs
    await harness.assert_quiet()
    assert harness.objects("results/") == [result.key]


async def test_result_url_is_downloaded_without_the_api_key(make_swapper: MakeSwapper) -> None:
    harness = await make_swapper()
    url = harness.fake.add_file(png_bytes((22, 11)), "image/png")
    harness.fake.endpoint(PRIMARY).plan = JobPlan(output={"result_url": url})
    result = result_of(await harness.swap(harness.request(await harness.put_reference())))
    assert result.method == common_pb2.FACE_SWAP_METHOD_EXTERNAL_API
    assert (result.width, result.height) == (22, 11)
    downloads = [r for r in harness.fake.requests if r.route == "files"]
    assert len(downloads) == 1 and downloads[0].authorization == ""
    await harness.assert_quiet()


async def test_result_url_that_fails_is_undecodable(make_swapper: MakeSwapper) -> None:
    harness = await make_swapper()
    missing = harness.fake.add_file(b"", "image/png").replace("/files/", "/files/missing-")
    harness.fake.endpoint(PRIMARY).plan = JobPlan(output={"url": missing})
    result = result_of(await harness.swap(harness.request(await harness.put_reference())))
    assert result.fallback_reason == common_pb2.FALLBACK_REASON_UNDECODABLE_RESULT
    assert "could not be downloaded" in result.fallback_message and "404" in result.fallback_message


async def test_result_url_over_the_size_cap_is_refused(make_swapper: MakeSwapper) -> None:
    harness = await make_swapper(FACE_SWAP_RESULT_MAX_BYTES="2048")
    url = harness.fake.add_file(b"\x89PNG\r\n\x1a\n" + b"\0" * 10_000, "image/png")
    harness.fake.endpoint(PRIMARY).plan = JobPlan(output={"result_url": url})
    result = result_of(await harness.swap(harness.request(await harness.put_reference())))
    assert result.fallback_reason == common_pb2.FALLBACK_REASON_UNDECODABLE_RESULT
    assert "limit" in result.fallback_message
