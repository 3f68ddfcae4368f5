"""Helpers for the swapper's integration tests: a harness around an in-process server, small images."""

from __future__ import annotations

import asyncio
import io
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

import grpc
from PIL import Image

from facegen.v1 import swapper_pb2, swapper_pb2_grpc
from services.common.metrics import value
from services.stack.runpod_emulator import RunPodEmulator as FakeRunPod
from services.swapper.app import SwapperApp
from services.swapper.settings import Settings
from tests.waiting import until

API_KEY = "rpa_TESTKEY0123456789abcdefghijklmn"
PRIMARY = "ep-primary"
BACKUP = "ep-backup"


def image_bytes(fmt: str = "PNG", size: tuple[int, int] = (48, 40), color: tuple[int, int, int] = (200, 90, 40),
                ) -> bytes:
    """A small valid image."""
    out = io.BytesIO()
    Image.new("RGB", size, color).save(out, fmt)
    return out.getvalue()


@dataclass
class Harness:
    """One in-process swapper server and a client for it."""

    app: SwapperApp
    channel: grpc.aio.Channel
    stub: swapper_pb2_grpc.SwapperServiceStub
    settings: Settings
    fake: FakeRunPod
    baseline_tasks: set[asyncio.Task[object]] = field(default_factory=set)

    async def put_reference(self, data: bytes | None = None, job_id: str = "job") -> str:
        """Stores a reference face; returns its key."""
        answer = await self.stub.PutReference(swapper_pb2.PutReferenceRequest(
            job_id=job_id, image=data or image_bytes("JPEG", color=(20, 30, 240))))
        return str(answer.key)

    def request(self, reference_key: str = "", job_id: str | None = None, index: int = 0,
                target: bytes | None = None, deadline_ms: int = 0) -> swapper_pb2.SwapRequest:
        """A SwapRequest with sensible defaults."""
        return swapper_pb2.SwapRequest(job_id=job_id or f"job-{uuid.uuid4().hex[:8]}", image_index=index,
                                       target_image=image_bytes() if target is None else target,
                                       reference_key=reference_key, deadline_ms=deadline_ms)

    async def swap(self, request: swapper_pb2.SwapRequest, rpc_timeout_s: float = 30,
                   ) -> list[swapper_pb2.SwapEvent]:
        """Runs Swap to its end; returns every event."""
        self.baseline_tasks = set(asyncio.all_tasks())
        return [event async for event in self.stub.Swap(request, timeout=rpc_timeout_s)]

    def objects(self, prefix: str = "") -> list[str]:
        """Keys in the test bucket under ``prefix``."""
        storage = self.app.storage
        assert storage is not None
        answer = storage.client.list_objects_v2(Bucket=storage.bucket, Prefix=prefix)
        return [item["Key"] for item in answer.get("Contents", [])]

    def head(self, key: str) -> dict[str, object]:
        """HEAD of an object."""
        storage = self.app.storage
        assert storage is not None
        return dict(storage.client.head_object(Bucket=storage.bucket, Key=key))

    def get(self, key: str) -> bytes:
        """An object's bytes."""
        storage = self.app.storage
        assert storage is not None
        return bytes(storage.client.get_object(Bucket=storage.bucket, Key=key)["Body"].read())

    def metric(self, name: str, **labels: str) -> float:
        """A value of the swapper's metrics."""
        return value(self.app.metrics.registry, name, labels)

    def blocking_calls(self) -> float:
        """Calls running in (or queued for) the storage pool's threads, as the metric counts them."""
        return self.metric("facegen_swapper_blocking_calls_in_flight", pool="storage")

    async def assert_quiet(self, within_s: float = 5.0) -> None:
        """Nothing the swaps started is still running: no thread call, no task, no temp object."""
        current = asyncio.current_task()
        await until(lambda: self.blocking_calls() == 0, within_s, "an idle thread pool")
        await until(lambda: self.metric("facegen_swapper_swaps_in_flight") == 0, within_s, "no swap in flight")
        def leftovers() -> set[asyncio.Task[object]]:
            # The gRPC server's own accept loop re-arms itself per call; everything else counts.
            return {t for t in asyncio.all_tasks() - self.baseline_tasks
                    if t is not current and not t.done() and "_request_registered_call" not in repr(t)}

        try:
            await until(lambda: not leftovers(), within_s, "no leftover task")
        except AssertionError:
            raise AssertionError(f"tasks left running: {[repr(t) for t in leftovers()]}") from None
        assert self.objects("tmp/") == []

    async def close(self) -> None:
        """Stops everything this harness started."""
        await self.channel.close()
        await self.app.stop(0)


def result_of(events: list[swapper_pb2.SwapEvent]) -> swapper_pb2.SwapResult:
    """The one result event (asserting there is exactly one, and it is last)."""
    results = [event.result for event in events if event.WhichOneof("event") == "result"]
    assert len(results) == 1, f"expected exactly one result, got {len(results)}"
    assert events[-1].WhichOneof("event") == "result"
    return results[0]


def kinds(events: list[swapper_pb2.SwapEvent]) -> list[str]:
    """The event kinds in order."""
    return [str(event.WhichOneof("event")) for event in events]


MakeSwapper = Callable[..., Awaitable[Harness]]
