"""What only the in-memory job store does: expiry by TTL and a bound on the jobs it keeps.

The behaviour both stores share is tested in tests/integration/gateway/test_store_contract.py.
"""

from __future__ import annotations

import pytest

from facegen.v1 import common_pb2, gateway_pb2
from services.common.errors import ResourceExhausted
from services.gateway.admission import AdmissionLimits
from services.gateway.memory_store import InMemoryJobStore
from services.gateway.store import NewJob
from services.gateway.validation import JobSpec

pytestmark = pytest.mark.unit

COMPLETED = gateway_pb2.JOB_STATE_COMPLETED


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def new_job(job_id: str, key: str = "") -> NewJob:
    first = gateway_pb2.JobEvent(job_id=job_id, seq=1, stage=gateway_pb2.STAGE_QUEUED)
    spec = JobSpec(generate=None, num_images=1, swap_options=common_pb2.SwapOptions(), reference_key="refs/k.png")
    return NewJob(job_id, spec, first, key)


async def finish(store: InMemoryJobStore, job_id: str) -> None:
    """Runs the job (the next one claimed must be ``job_id``) to its terminal event."""
    lease = await store.claim("gw")
    assert lease is not None and lease.job_id == job_id
    done = gateway_pb2.JobEvent(job_id=job_id, stage=gateway_pb2.STAGE_TERMINAL)
    await store.append(lease, done, COMPLETED)
    await store.finish(lease)


async def test_finished_jobs_expire_after_the_ttl_with_their_idempotency_key() -> None:
    clock = Clock()
    store = InMemoryJobStore(60, 10, 100, AdmissionLimits(4, 4), clock=clock)
    await store.create(new_job("done", "key-done"))
    await store.create(new_job("running"))
    await finish(store, "done")
    assert await store.claim("gw") is not None
    clock.now += 59
    assert await store.get("done") is not None
    clock.now += 2
    assert await store.get("done") is None
    assert await store.find("key-done") is None
    assert await store.get("running") is not None, "jobs that have not ended never expire"
    assert len(store) == 1


async def test_the_oldest_finished_job_makes_room_and_a_store_full_of_running_jobs_refuses() -> None:
    store = InMemoryJobStore(3600, 2, 100, AdmissionLimits(4, 4))
    await store.create(new_job("first"))
    await store.create(new_job("second"))
    first = await store.claim("gw")
    await finish(store, "second")
    assert first is not None
    await store.append(first, gateway_pb2.JobEvent(job_id="first", stage=gateway_pb2.STAGE_TERMINAL), COMPLETED)
    await store.finish(first)
    await store.create(new_job("third"))
    assert await store.get("second") is None, "second ended first, so it goes first"
    assert await store.get("first") is not None
    await store.create(new_job("fourth"))
    with pytest.raises(ResourceExhausted, match="at most 2 jobs"):
        await store.create(new_job("fifth"))
    assert len(store) == 2
