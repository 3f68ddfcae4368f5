"""Job streams over a scripted gateway: each event once and in order, re-attaching, and who cancels what."""

from __future__ import annotations

import asyncio

import grpc
import pytest

from facegen.v1 import gateway_pb2
from services.client import AsyncFacegenClient, FacegenClient, GatewayError, JobLostError, RetryPolicy
from tests.unit.client.scripted_gateway import JOB, AsyncStub, RpcError, Script, Stream, SyncStub, event

pytestmark = pytest.mark.unit

POLICY = RetryPolicy(initial_backoff=0.001, max_backoff=0.001, give_up_after=5)
UNAVAILABLE = RpcError(grpc.StatusCode.UNAVAILABLE, "Socket closed")
REQUEST = gateway_pb2.JobRequest(prompt="a portrait", reference_key="refs/face")


@pytest.fixture
def client() -> FacegenClient:
    return FacegenClient("127.0.0.1:1", policy=POLICY)


def scripted(client: FacegenClient, script: Script) -> FacegenClient:
    client.stub = SyncStub(script)  # type: ignore[assignment]
    return client


def test_a_broken_stream_is_watched_again_after_the_last_event_and_replays_are_dropped(
        client: FacegenClient) -> None:
    script = Script(streams=[Stream([event(1), event(2), event(3)], UNAVAILABLE),
                             Stream([event(3), event(4)]),  # a replay, then a clean end without the terminal
                             Stream([event(5, terminal=True)])])
    stream = scripted(client, script).run(REQUEST)
    assert [e.seq for e in stream] == [1, 2, 3, 4, 5]
    assert script.watched == [0, 3, 4]
    assert stream.resumes == 2
    assert stream.result.state == gateway_pb2.JOB_STATE_COMPLETED
    assert not script.cancelled


def test_nothing_is_read_after_the_terminal_event(client: FacegenClient) -> None:
    script = Script(streams=[Stream([event(1), event(2, terminal=True), event(3)], UNAVAILABLE)])
    stream = scripted(client, script).run(REQUEST)
    assert [e.seq for e in stream] == [1, 2]
    assert script.watched == [0] and stream.resumes == 0


def test_a_submit_whose_answer_was_lost_is_repeated_with_the_same_key(client: FacegenClient) -> None:
    script = Script(submits=[UNAVAILABLE, JOB], streams=[Stream([event(1, terminal=True)])])
    result = scripted(client, script).run(REQUEST).wait()
    assert result.state == gateway_pb2.JOB_STATE_COMPLETED
    keys = [request.idempotency_key for request in script.submitted]
    assert len(keys) == 2 and keys[0] == keys[1] != ""
    assert REQUEST.idempotency_key == "", "the caller's request is left as it was"


def test_the_callers_own_key_is_kept(client: FacegenClient) -> None:
    script = Script(streams=[Stream([event(1, terminal=True)])])
    keyed = gateway_pb2.JobRequest(prompt="x", reference_key="k", idempotency_key="order-42")
    scripted(client, script).run(keyed).wait()
    assert [request.idempotency_key for request in script.submitted] == ["order-42"]


def test_a_job_the_gateway_forgot_is_reported_lost_and_not_submitted_again(client: FacegenClient) -> None:
    script = Script(streams=[Stream([event(1), event(2)], UNAVAILABLE),
                             Stream([], RpcError(grpc.StatusCode.NOT_FOUND, "job 'job-1' not found"))])
    stream = scripted(client, script).run(REQUEST)
    with pytest.raises(JobLostError) as lost:
        list(stream)
    assert (lost.value.job_id, lost.value.last_seq) == (JOB, 2)
    assert len(script.submitted) == 1 and not script.cancelled


def test_an_unknown_job_given_to_watch_is_not_found_not_lost(client: FacegenClient) -> None:
    script = Script(streams=[Stream([], RpcError(grpc.StatusCode.NOT_FOUND, "job 'job-1' not found"))])
    with pytest.raises(GatewayError) as unknown:
        list(scripted(client, script).watch(JOB))
    assert unknown.value.code == grpc.StatusCode.NOT_FOUND
    assert not isinstance(unknown.value, JobLostError)


def test_a_refused_submit_is_raised_and_nothing_is_cancelled(client: FacegenClient) -> None:
    script = Script(submits=[RpcError(grpc.StatusCode.INVALID_ARGUMENT, "prompt: 1–2,000 characters")])
    with pytest.raises(GatewayError) as refused:
        scripted(client, script).run(REQUEST).wait()
    assert refused.value.code == grpc.StatusCode.INVALID_ARGUMENT
    assert len(script.submitted) == 1 and not script.cancelled


def test_ctrl_c_while_reading_cancels_the_job(client: FacegenClient) -> None:
    script = Script(streams=[Stream([event(1)], KeyboardInterrupt())])
    with pytest.raises(KeyboardInterrupt):
        list(scripted(client, script).run(REQUEST))
    assert script.cancelled == [JOB]


def test_ctrl_c_during_the_submit_finds_the_job_by_its_key_and_cancels_it(client: FacegenClient) -> None:
    script = Script(submits=[KeyboardInterrupt(), JOB])
    with pytest.raises(KeyboardInterrupt):
        list(scripted(client, script).run(REQUEST))
    first, second = script.submitted
    assert first.idempotency_key == second.idempotency_key
    assert script.cancelled == [JOB]


def test_leaving_a_run_early_cancels_the_job_but_leaving_a_watch_does_not(client: FacegenClient) -> None:
    script = Script(streams=[Stream([event(1), event(2)]), Stream([event(1), event(2)])])
    scripted(client, script)
    with client.watch(JOB) as watching:
        next(watching)
    assert not script.cancelled
    with client.run(REQUEST) as running:
        next(running)
    assert script.cancelled == [JOB]


def test_the_outage_budget_ends_a_stream_that_keeps_breaking(client: FacegenClient) -> None:
    client.policy = RetryPolicy(initial_backoff=0.01, max_backoff=0.01, give_up_after=0.05)
    script = Script(streams=[Stream([event(1)], UNAVAILABLE)] + [Stream([], UNAVAILABLE)] * 200)
    with pytest.raises(GatewayError) as gave_up:
        list(scripted(client, script).watch(JOB))
    assert gave_up.value.code == grpc.StatusCode.UNAVAILABLE and "gave up after" in gave_up.value.details
    assert gave_up.value.last_seq == 1
    assert 3 <= len(script.watched) < 20


async def test_the_asyncio_stream_re_attaches_and_drops_replays() -> None:
    script = Script(streams=[Stream([event(1), event(2)], UNAVAILABLE),
                             Stream([event(2), event(3, terminal=True)])])
    async with AsyncFacegenClient("127.0.0.1:1", policy=POLICY) as client:
        client.stub = AsyncStub(script)  # type: ignore[assignment]
        stream = client.run(REQUEST)
        seqs = [e.seq async for e in stream]
    assert seqs == [1, 2, 3] and script.watched == [0, 2] and stream.resumes == 1
    assert stream.result.state == gateway_pb2.JOB_STATE_COMPLETED


async def test_cancelling_the_asyncio_reader_cancels_the_job_once() -> None:
    script = Script(streams=[Stream([event(1)], asyncio.CancelledError())])
    async with AsyncFacegenClient("127.0.0.1:1", policy=POLICY) as client:
        client.stub = AsyncStub(script)  # type: ignore[assignment]
        with pytest.raises(asyncio.CancelledError):
            await client.run(REQUEST).wait()
    assert script.cancelled == [JOB]
