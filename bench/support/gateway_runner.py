"""What the gateway benchmarks share: scripted upstream delays, one Run job timed, percentiles, CPU time.

Imported by bench/gateway.py and bench/scaleout.py (run from the repository
root, which they put on ``sys.path``).
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

import grpc

from facegen.v1 import gateway_pb2, gateway_pb2_grpc
from tests.fakes.grpc_upstreams import FakeUpstreams, GeneratorScript, SwapScript


@dataclass
class Delays:
    """Scripted upstream delays, seconds."""

    upload: float
    steps: int
    step: float
    swap: float

    @property
    def critical_path(self) -> float:
        """The upstream time a job cannot beat: max(upload, generation) + swap."""
        return max(self.upload, self.steps * self.step) + self.swap

    def apply(self, fakes: FakeUpstreams) -> None:
        """Scripts the fakes with these delays (for the jobs that start from now on)."""
        fakes.generator.script = GeneratorScript(steps=self.steps, step_delay=self.step)
        fakes.swapper.script = SwapScript(put_delay=self.upload, delay=self.swap)


@dataclass
class Outcome:
    """One Run call as the client saw it."""

    seconds: float
    events: int
    ok: bool
    error: str = ""
    job_id: str = ""

    def upstream_seconds(self, fakes: FakeUpstreams) -> float:
        """The upstream critical path this job actually took, as the fakes measured it:
        max(generation, reference upload) + the slowest swap."""
        generation = fakes.generator.durations.get(self.job_id, 0.0)
        upload = fakes.swapper.put_durations.get(self.job_id, 0.0)
        swaps = [seconds for (job_id, _), seconds in fakes.swapper.swap_durations.items()
                 if job_id == self.job_id]
        return max(generation, upload) + max(swaps, default=0.0)

    def overhead_ms(self, fakes: FakeUpstreams) -> float:
        """End-to-end time beyond the upstream time the fakes measured (their sleeps run late on a busy
        machine; that lateness is theirs, not the gateway's), in ms."""
        return (self.seconds - self.upstream_seconds(fakes)) * 1000


async def run_one(stub: gateway_pb2_grpc.GatewayServiceStub, request: gateway_pb2.JobRequest) -> Outcome:
    """Runs one job through ``Run`` to its terminal event."""
    start = time.perf_counter()
    events = 0
    last = None
    try:
        async for event in stub.Run(request):
            events += 1
            last = event
    except grpc.aio.AioRpcError as exc:
        return Outcome(time.perf_counter() - start, events, False, f"{exc.code().name}: {exc.details()}")
    ok = last is not None and last.result.state == gateway_pb2.JOB_STATE_COMPLETED
    error = "" if ok or last is None else f"{last.result.code}: {last.result.message}"
    return Outcome(time.perf_counter() - start, events, ok, error, last.job_id if last else "")


def percentile(values: list[float], fraction: float) -> float:
    """The value at ``fraction`` (0.5: the median) of ``values``, nearest rank."""
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(fraction * (len(ordered) - 1)))]


def cpu_seconds(pid: int) -> float:
    """CPU time of every thread of the process, in nanoseconds' resolution (/proc/<pid>/task/*/schedstat);
    psutil's cpu_times counts in clock ticks (10 ms), too coarse for one job."""
    total = 0
    for task in Path(f"/proc/{pid}/task").iterdir():
        try:
            total += int((task / "schedstat").read_text().split()[0])
        except (FileNotFoundError, ProcessLookupError):
            continue  # a thread that ended meanwhile
    return total / 1e9
