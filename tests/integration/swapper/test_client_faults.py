"""What outside testing found in the RunPod client (issue 11, items 10-13), each against the fake endpoint."""

from __future__ import annotations

import logging
import re

import pytest

from facegen.v1 import common_pb2
from services.stack.runpod_emulator import Fault, JobPlan
from tests.integration.swapper.harness import PRIMARY, MakeSwapper, result_of

pytestmark = pytest.mark.integration


def events_logged(caplog: pytest.LogCaptureFixture, name: str) -> list[str]:
    """The messages of the log lines of one event."""
    return [record.getMessage() for record in caplog.records if f"event={name} " in record.getMessage() + " "]


async def test_oversized_status_answer_is_undecodable_asked_once_and_not_cancelled(make_swapper: MakeSwapper,
                                                                                   ) -> None:
    """11.10: a COMPLETED answer refused for its size is not fetched again and its job gets no /cancel."""
    harness = await make_swapper(FACE_SWAP_RESULT_MAX_BYTES="2048")
    # Completed at once, with an output far over any answer the client accepts for a 2 KiB result.
    harness.fake.endpoint(PRIMARY).plan = JobPlan(run_s=0.0, output={"result": "A" * 1_200_000})
    result = result_of(await harness.swap(harness.request(await harness.put_reference(), deadline_ms=5000)))
    assert result.fallback_reason == common_pb2.FALLBACK_REASON_UNDECODABLE_RESULT, result.fallback_message
    assert "limit" in result.fallback_message
    assert harness.fake.count("status") == 1, "an answer refused for its size is not asked for again"
    assert harness.fake.count("cancel") == 0, "a job whose answer carried its output has ended"
    await harness.assert_quiet()


async def test_no_request_outlives_the_swaps_deadline(make_swapper: MakeSwapper,
                                                      caplog: pytest.LogCaptureFixture) -> None:
    """11.11: against an endpoint whose /status never answers, the swap ends at its deadline, not 0.5 s later."""
    caplog.set_level(logging.INFO)
    harness = await make_swapper(FACE_SWAP_HTTP_TIMEOUT_SECONDS="10", FACE_SWAP_STATUS_WAIT_MS="10000")
    endpoint = harness.fake.endpoint(PRIMARY)
    endpoint.plan = JobPlan(run_s=30)
    endpoint.script("status", Fault.hang(30), None)
    deadline_ms = 1500
    result = result_of(await harness.swap(harness.request(await harness.put_reference(),
                                                          deadline_ms=deadline_ms)))
    assert result.fallback_reason == common_pb2.FALLBACK_REASON_ENDPOINT_UNAVAILABLE
    [line] = events_logged(caplog, "swap.result")
    elapsed_ms = int(re.search(r"elapsed_ms=(\d+)", line).group(1))  # type: ignore[union-attr]
    # The swap's own clock, from its start to its stored result: past the deadline only by one
    # /cancel and one small upload to loopback servers (the old client overshot by 500 ms more).
    assert elapsed_ms < deadline_ms + 400, line
    assert harness.fake.count("cancel") == 1
    await harness.assert_quiet()


async def test_the_circuit_is_checked_before_every_run_attempt(make_swapper: MakeSwapper) -> None:
    """11.12: an endpoint that always answers 500 gets exactly as many /run as the breaker's threshold."""
    harness = await make_swapper(FACE_SWAP_BREAKER_FAILURES="2", FACE_SWAP_SUBMIT_ATTEMPTS="3",
                                 FACE_SWAP_BREAKER_COOLDOWN_SECONDS="60")
    harness.fake.endpoint(PRIMARY).script("run", Fault.http(500), None)
    result = result_of(await harness.swap(harness.request(await harness.put_reference())))
    assert result.fallback_reason == common_pb2.FALLBACK_REASON_ENDPOINT_UNAVAILABLE
    assert "circuit open" in result.fallback_message
    assert harness.fake.count("run") == 2


@pytest.mark.parametrize("status", [500, 502, 503])
async def test_status_5xx_retries_are_logged(make_swapper: MakeSwapper, caplog: pytest.LogCaptureFixture,
                                             status: int) -> None:
    """11.13: every retried /status writes a WARNING line naming the job and the cause."""
    caplog.set_level(logging.INFO)
    harness = await make_swapper()
    harness.fake.endpoint(PRIMARY).script("status", Fault.http(status), 2)
    result = result_of(await harness.swap(harness.request(await harness.put_reference())))
    assert result.method == common_pb2.FACE_SWAP_METHOD_EXTERNAL_API
    retries = [r for r in caplog.records if "event=runpod.status_retry" in r.getMessage()]
    assert len(retries) == 2
    remote_id = harness.fake.jobs()[0].id
    for record in retries:
        assert record.levelno == logging.WARNING
        assert f"HTTP {status}" in record.getMessage() and f"remote_id={remote_id}" in record.getMessage()
