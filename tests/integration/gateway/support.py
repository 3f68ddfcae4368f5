"""Helpers shared by the gateway's integration tests."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

from facegen.v1 import gateway_pb2
from tests.fakes.grpc_upstreams import png_bytes


def job_request(**fields: Any) -> gateway_pb2.JobRequest:
    """A valid request (one image, a PNG reference face) with ``fields`` changed."""
    values: dict[str, Any] = {"prompt": "a portrait in the rain", "reference_image": png_bytes(48, 48)}
    values.update(fields)
    return gateway_pb2.JobRequest(**values)


async def collect(stream: AsyncIterator[gateway_pb2.JobEvent]) -> list[gateway_pb2.JobEvent]:
    """Every event of a stream."""
    return [event async for event in stream]


def check_stream(events: list[gateway_pb2.JobEvent], first_seq: int = 1) -> gateway_pb2.JobResult:
    """Checks what every job stream keeps, and returns the terminal result.

    Seqs are contiguous from ``first_seq``, exactly one terminal event comes
    last, neither the percent nor the stage ever goes backwards and every
    event names its job.
    """
    assert events, "the stream was empty"
    assert [ev.seq for ev in events] == list(range(first_seq, first_seq + len(events)))
    terminal = [ev for ev in events if ev.stage == gateway_pb2.STAGE_TERMINAL]
    assert len(terminal) == 1, f"{len(terminal)} terminal events"
    assert terminal[0] is events[-1]
    percents = [ev.percent for ev in events]
    assert percents == sorted(percents), percents
    stages = [ev.stage for ev in events]
    assert stages == sorted(stages), f"the stage went backwards: {stages}"
    assert len({ev.job_id for ev in events}) == 1
    assert events[-1].HasField("result")
    return events[-1].result
