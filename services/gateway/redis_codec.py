"""How a job is laid out in Redis: key names, and the fields of its hash.

Every key of one job carries the job id as its hash tag (``{<job id>}``), so
they live in one slot and the job's scripts run on Redis Cluster too. The
queue, the leases and the admission count share the tag ``{queue}``.

The job hash holds the plan (without image bytes: the images are in the
swapper's storage) with the traceparent of the call that submitted it, the
state shown by Get, the lease (holder, epoch, expiry), a cancel request,
and one checkpoint per image: ``img:<i>`` (stored key, remote job; JSON),
``res:<i>`` (its ImageResult) or ``fail:<i>`` (its ImageFailure). The events
are a Stream whose entry ids are ``<seq>-0``.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any, cast

from facegen.v1 import common_pb2, gateway_pb2, generator_pb2
from services.common.tracing import trace_id_of
from services.gateway.store import ImageCheckpoint, Lease, NewJob
from services.gateway.validation import JobSpec

Fields = dict[bytes, bytes]


@dataclass(frozen=True)
class Keys:
    """Key and channel names under one prefix."""

    prefix: str = "facegen"

    def job(self, job_id: str) -> str:
        """The job's hash."""
        return f"{self.prefix}:job:{{{job_id}}}"

    def events(self, job_id: str) -> str:
        """The job's event Stream."""
        return f"{self.prefix}:job:{{{job_id}}}:events"

    def live(self, job_id: str) -> str:
        """The channel where each new event of the job is published."""
        return f"{self.prefix}:job:{{{job_id}}}:live"

    def idempotency(self, key: str) -> str:
        """Idempotency key -> "<job id> <request fingerprint>"."""
        return f"{self.prefix}:idem:{{{key}}}"

    @property
    def pending(self) -> str:
        """List of queued job ids, oldest first."""
        return f"{self.prefix}:{{queue}}:pending"

    @property
    def leases(self) -> str:
        """Sorted set: job id -> lease expiry (Redis time, ms). Its size is the running count."""
        return f"{self.prefix}:{{queue}}:leases"

    @property
    def active(self) -> str:
        """Sorted set: admitted (queued or running) job id -> admission time (ms)."""
        return f"{self.prefix}:{{queue}}:active"

    @property
    def wake(self) -> str:
        """Channel: a job may have become claimable."""
        return f"{self.prefix}:wake"

    @property
    def cancel(self) -> str:
        """Channel: "<job id>\\n<reason>" for every cancel request."""
        return f"{self.prefix}:cancel"


def job_fields(job: NewJob, created_ms: int) -> list[bytes | str | int | float]:
    """The new job's hash, as field/value pairs."""
    spec = job.spec
    pairs: dict[str, bytes | str | int | float] = {
        "state": gateway_pb2.JOB_STATE_QUEUED, "stage": gateway_pb2.STAGE_QUEUED, "percent": 0.0,
        "last_seq": job.first_event.seq, "created_ms": created_ms, "owner": "", "holder": "", "epoch": 0,
        "lease_until": 0, "num_images": spec.num_images,
        "generate": spec.generate.SerializeToString() if spec.generate is not None else b"",
        "swap_options": spec.swap_options.SerializeToString(), "reference_key": spec.reference_key,
        "idem": job.idempotency_key, "fingerprint": job.fingerprint, "summary": json.dumps(spec.summary),
        "traceparent": spec.traceparent,
    }
    for index, point in job.images.items():
        pairs.update(checkpoint_fields(index, point))
    return [item for pair in pairs.items() for item in pair]


def checkpoint_fields(index: int, point: ImageCheckpoint) -> dict[str, bytes | str]:
    """The hash fields that record how far image ``index`` got."""
    fields: dict[str, bytes | str] = {}
    if point.stored_key or point.remote_job_id:
        fields[f"img:{index}"] = json.dumps({"stored": point.stored_key, "remote": point.remote_job_id,
                                             "endpoint": point.endpoint})
    if point.result is not None:
        fields[f"res:{index}"] = point.result.SerializeToString()
    if point.failure is not None:
        fields[f"fail:{index}"] = point.failure.SerializeToString()
    return fields


def _text(fields: Fields, name: str, default: str = "") -> str:
    value = fields.get(name.encode())
    return default if value is None else value.decode()


def spec_from_fields(fields: Fields) -> JobSpec:
    """The job's plan, as the orchestrator runs it."""
    generate_bytes = fields.get(b"generate", b"")
    return JobSpec(
        generate=generator_pb2.GenerateRequest.FromString(generate_bytes) if generate_bytes else None,
        num_images=int(_text(fields, "num_images", "1")),
        swap_options=common_pb2.SwapOptions.FromString(fields.get(b"swap_options", b"")),
        reference_key=_text(fields, "reference_key"),
        idempotency_key=_text(fields, "idem"),
        summary=json.loads(_text(fields, "summary", "{}")),
        traceparent=_text(fields, "traceparent"),
    )


def images_from_fields(fields: Fields) -> dict[int, ImageCheckpoint]:
    """Every image checkpoint in the hash."""
    images: dict[int, ImageCheckpoint] = {}
    for name, value in fields.items():
        kind, _, number = name.decode().partition(":")
        if kind not in ("img", "res", "fail") or not number.isdigit():
            continue
        point = images.setdefault(int(number), ImageCheckpoint())
        if kind == "img":
            stored = json.loads(value)
            point.stored_key, point.remote_job_id, point.endpoint = (
                stored["stored"], stored["remote"], stored["endpoint"])
        elif kind == "res":
            point.result = gateway_pb2.ImageResult.FromString(value)
        else:
            point.failure = gateway_pb2.ImageFailure.FromString(value)
    return images


def lease_from_fields(job_id: str, owner: str, previous: str, fields: Fields) -> Lease:
    """The lease a claim hands out, with everything the job needs to run or resume."""
    cancel = fields.get(b"cancel")
    return Lease(
        job_id=job_id, owner=owner, epoch=int(_text(fields, "epoch", "0")), spec=spec_from_fields(fields),
        last_seq=int(_text(fields, "last_seq", "0")), percent=float(_text(fields, "percent", "0")),
        stage=cast(gateway_pb2.Stage, int(_text(fields, "stage", "1"))),
        created_at=int(_text(fields, "created_ms", "0")) / 1000, images=images_from_fields(fields),
        cancel_reason=cancel.decode() if cancel else None, previous_owner=previous)


SNAPSHOT_FIELDS = ("state", "stage", "percent", "last_seq", "created_ms", "result", "traceparent")


def job_from_snapshot(job_id: str, values: list[Any]) -> gateway_pb2.Job | None:
    """A Job from the hash fields named by SNAPSHOT_FIELDS (None when the job is unknown)."""
    state, stage, percent, last_seq, created_ms, result, traceparent = values
    if state is None:
        return None
    job = gateway_pb2.Job(job_id=job_id, state=cast(gateway_pb2.JobState, int(state)),
                          stage=cast(gateway_pb2.Stage, int(stage)), percent=float(percent), last_seq=int(last_seq),
                          trace_id=trace_id_of((traceparent or b"").decode()))
    job.created_at.FromMilliseconds(int(created_ms))
    if result:
        job.result.ParseFromString(result)
    return job
