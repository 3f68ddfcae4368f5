"""Many replicas, one system, through the whole stack: two gateways on one Redis, one generator,
one swapper, S3 and the RunPod emulator running the real worker.

Gateways are SIGKILLed during generation and while their RunPod job is in flight, SIGTERMed with
jobs running, and Redis is killed under a running job: every job ends as it should, the event
sequences have no gap and no duplicate, and the endpoint receives exactly one ``/run`` per image.
"""

from __future__ import annotations

import time
from collections.abc import Iterator

import grpc
import pytest
from grpc_health.v1 import health_pb2

from facegen.v1 import gateway_pb2
from services.stack.launcher import LocalStack
from tests.cluster import Cluster, check, kill_holder_and_follow, until
from tests.waiting import until_sync

pytestmark = pytest.mark.e2e


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    extra = {"GATEWAY_LEASE_SECONDS": "2", "GATEWAY_DRAIN_SECONDS": "60", "GATEWAY_MAX_RUNNING_JOBS": "3",
             "GATEWAY_MAX_QUEUED_JOBS": "2", "FACE_SWAP_DEADLINE_SECONDS": "60"}
    with LocalStack(tmp_path_factory.mktemp("scaleout"), gateways=2, extra_env=extra) as stack:
        yield Cluster(stack)


def job(face: bytes, **fields: object) -> gateway_pb2.JobRequest:
    fields.setdefault("prompt", "portrait photo of a woman")
    return gateway_pb2.JobRequest(reference_image=face, **fields)  # type: ignore[arg-type]


def test_any_gateway_serves_any_job_with_one_idempotency_key_space(cluster: Cluster, face: bytes,
                                                                   template: bytes) -> None:
    a, b = (cluster.stub(name) for name in cluster.names)
    submitted = a.Submit(job(face, target_image=template, idempotency_key="e2e-order-1"), timeout=60)
    again = b.Submit(job(face, target_image=template, idempotency_key="e2e-order-1"), timeout=60)
    assert (again.job_id, again.created) == (submitted.job_id, False)
    with pytest.raises(grpc.RpcError) as conflict:
        b.Submit(job(face, target_image=template, idempotency_key="e2e-order-1", prompt="other"), timeout=60)
    assert conflict.value.code() == grpc.StatusCode.ALREADY_EXISTS
    assert submitted.job_id in conflict.value.details()
    result = check(list(b.Watch(gateway_pb2.WatchRequest(job_id=submitted.job_id), timeout=120)))
    assert result.state == gateway_pb2.JOB_STATE_COMPLETED, result.message
    assert a.Get(gateway_pb2.GetRequest(job_id=submitted.job_id), timeout=10).result == result


def test_a_cancel_through_the_other_gateway_ends_the_job_within_a_second(cluster: Cluster, face: bytes) -> None:
    a, b = (cluster.stub(name) for name in cluster.names)
    stream = a.Run(job(face, steps=50, width=512, height=512), timeout=120)
    seen = until(stream, lambda event: event.HasField("denoise"))
    started = time.monotonic()
    state = b.Cancel(gateway_pb2.CancelRequest(job_id=seen[0].job_id), timeout=10).state
    assert state == gateway_pb2.JOB_STATE_CANCELLED
    assert time.monotonic() - started < 1.0
    assert check([*seen, *stream]).state == gateway_pb2.JOB_STATE_CANCELLED


def test_admission_limits_hold_for_the_deployment(cluster: Cluster, face: bytes) -> None:
    a, b = (cluster.stub(name) for name in cluster.names)
    jobs = [(a if number % 2 else b).Submit(job(face, steps=50, width=512, height=512), timeout=60).job_id
            for number in range(5)]
    try:
        for stub in (a, b):
            with pytest.raises(grpc.RpcError) as full:
                stub.Submit(job(face), timeout=60)
            assert full.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    finally:
        for job_id in jobs:
            a.Cancel(gateway_pb2.CancelRequest(job_id=job_id), timeout=10)


def test_a_job_survives_the_sigkill_of_its_gateway_during_generation(cluster: Cluster, face: bytes) -> None:
    runs = cluster.runs()
    stub = cluster.stub(cluster.names[0])
    submitted = stub.Submit(job(face, steps=50, width=512, height=512, num_images=2, seed=7), timeout=60)
    seen = until(cluster.stub(cluster.names[1]).Watch(gateway_pb2.WatchRequest(job_id=submitted.job_id), timeout=120),
                 lambda event: event.denoise.step >= 3)
    events, _survivor, failover = kill_holder_and_follow(cluster, submitted.job_id, seen)
    result = check(events)
    assert result.state == gateway_pb2.JOB_STATE_COMPLETED, result.message
    assert [(image.index, image.seed) for image in result.images] == [(0, 7), (1, 8)]
    assert sum(event.resumed for event in events) == 1
    assert failover < 5.0
    assert cluster.runs() - runs == 2, "one /run per image"


def test_a_job_survives_the_sigkill_of_its_gateway_while_its_runpod_job_is_in_flight(
        cluster: Cluster, face: bytes, template: bytes) -> None:
    runs = cluster.runs()
    # Status answers come late: the remote job stays "in flight" for seconds.
    cluster.faults(latency_ms=3000, routes=["status"])
    try:
        submitted = cluster.stub(cluster.names[1]).Submit(job(face, target_image=template), timeout=60)
        seen = until(cluster.stub(cluster.names[0]).Watch(gateway_pb2.WatchRequest(job_id=submitted.job_id),
                                                          timeout=120),
                     lambda event: event.HasField("remote") and bool(event.remote.remote_job_id))
        remote_id = seen[-1].remote.remote_job_id
        events, _survivor, _failover = kill_holder_and_follow(cluster, submitted.job_id, seen)
    finally:
        cluster.faults(latency_ms=0, routes=[])
    result = check(events)
    assert result.state == gateway_pb2.JOB_STATE_COMPLETED, result.message
    assert result.images[0].face_swap_method != 0
    assert sum(event.resumed for event in events) == 1
    assert {event.remote.remote_job_id for event in events if event.remote.remote_job_id} == {remote_id}
    assert cluster.runs() - runs == 1, "the RunPod job was followed again, not submitted again"


def test_sigterm_drains_a_gateway_without_cancelling_its_jobs(cluster: Cluster, face: bytes) -> None:
    name = cluster.names[0]
    stub = cluster.stub(name)
    jobs = [stub.Submit(job(face, steps=30, seed=number), timeout=60).job_id for number in range(2)]
    watcher = cluster.stub(cluster.names[1])
    for job_id in jobs:
        until(watcher.Watch(gateway_pb2.WatchRequest(job_id=job_id), timeout=120),
              lambda event: event.stage >= gateway_pb2.STAGE_GENERATING)
    cluster.stack.services[name].stop(grace=90)
    try:
        for job_id in jobs:
            result = check(list(watcher.Watch(gateway_pb2.WatchRequest(job_id=job_id), timeout=120)))
            assert result.state == gateway_pb2.JOB_STATE_COMPLETED, result.message
    finally:
        cluster.restart(name)


def test_a_redis_restart_mid_job_is_clear_while_it_lasts_and_loses_no_acknowledged_job(
        cluster: Cluster, face: bytes) -> None:
    a = cluster.stub(cluster.names[0])
    submitted = a.Submit(job(face, steps=50, width=512, height=512), timeout=60)
    until(a.Watch(gateway_pb2.WatchRequest(job_id=submitted.job_id), timeout=120),
          lambda event: event.HasField("denoise"))
    cluster.stack.services["redis"].kill()
    try:
        until_sync(lambda: cluster.serving(cluster.names[0]) == health_pb2.HealthCheckResponse.NOT_SERVING, 10,
                   "the gateway reporting NOT_SERVING", every_s=0.1)
        started = time.monotonic()
        with pytest.raises(grpc.RpcError) as down:
            a.Submit(job(face), timeout=30)
        assert down.value.code() == grpc.StatusCode.UNAVAILABLE
        assert "job store is unavailable" in down.value.details()
        assert time.monotonic() - started < 5
    finally:
        cluster.stack.restart("redis")
    result = check(list(a.Watch(gateway_pb2.WatchRequest(job_id=submitted.job_id), timeout=120)))
    assert result.state == gateway_pb2.JOB_STATE_COMPLETED, result.message
