"""Gateway benchmark: overhead, overlap of upload and generation, 500 concurrent Run streams.

The gateway runs as its own process (``python -m services.gateway``, logging
at INFO to a file, as in production) in front of the fake generator and
swapper from tests/fakes, which run in this process with fixed delays. The
figures:

- overhead at concurrency 1: end-to-end time of a Run minus the upstream
  critical path (max(upload, generation) + swap) as the fakes measured it
  (their sleeps run late on a busy machine; that lateness is theirs, not the
  gateway's), median of 60 jobs; the same against the scripted delays is
  printed beside it;
- overlap: upload 300 ms and generation 300 ms; end-to-end / 300 ms;
- 500 concurrent Run streams: errors, overhead p50/p99, events delivered per
  second, and the gateway's RSS growth per in-flight job (all 500 held in
  flight at once by the fake generator, peak RSS minus the RSS before).

Human lines first; the last line is one JSON object with figures and targets.
Run: ``.venv/bin/python bench/gateway.py``.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "protos")]

import grpc  # noqa: E402
import psutil  # noqa: E402
from grpc_health.v1 import health_pb2, health_pb2_grpc  # noqa: E402

from facegen.v1 import gateway_pb2, gateway_pb2_grpc  # noqa: E402
from services.common.config import MAX_MESSAGE_BYTES  # noqa: E402
from services.common.server import message_size_options  # noqa: E402
from tests.fakes.grpc_upstreams import FakeUpstreams, GeneratorScript, SwapScript, png_bytes  # noqa: E402

CONCURRENT = 500
SEQUENTIAL_JOBS = 60
TARGET_OVERHEAD_MS = 15.0
TARGET_OVERLAP = 1.10
TARGET_RSS_KB = 100.0


@dataclass
class Delays:
    """Scripted upstream delays, seconds."""

    upload: float
    steps: int
    step: float
    swap: float

    @property
    def critical_path(self) -> float:
        return max(self.upload, self.steps * self.step) + self.swap

    def apply(self, fakes: FakeUpstreams) -> None:
        fakes.generator.script = GeneratorScript(steps=self.steps, step_delay=self.step)
        fakes.swapper.script = SwapScript(put_delay=self.upload, delay=self.swap)


@dataclass
class Outcome:
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


class GatewayProcess:
    """``python -m services.gateway`` on a free port, logging to a temporary file."""

    def __init__(self, fakes: FakeUpstreams) -> None:
        self.log_dir = Path(tempfile.mkdtemp(prefix="gateway-bench-"))
        self.log_path = self.log_dir / "gateway.log"
        env = {**os.environ, "GATEWAY_LISTEN": "127.0.0.1:0", "GENERATOR_ADDRESS": fakes.generator_address,
               "SWAPPER_ADDRESS": fakes.swapper_address, "GATEWAY_MAX_RUNNING_JOBS": str(CONCURRENT + 12),
               "GATEWAY_MAX_QUEUED_JOBS": "64", "GATEWAY_MAX_JOBS": "5000", "GATEWAY_LOG_LEVEL": "INFO",
               "PYTHONPATH": os.pathsep.join([str(ROOT), str(ROOT / "protos")])}
        with self.log_path.open("w") as log:
            self.process = subprocess.Popen([sys.executable, "-m", "services.gateway"], cwd=ROOT, env=env,
                                            stdout=log, stderr=subprocess.STDOUT)
        self.ps = psutil.Process(self.process.pid)
        self.address = ""

    async def wait_serving(self, within: float = 30.0) -> str:
        deadline = time.monotonic() + within
        port = None
        while port is None:
            if time.monotonic() > deadline or self.process.poll() is not None:
                raise RuntimeError(f"the gateway did not start; see {self.log_path}")
            text = await asyncio.to_thread(self.log_path.read_text)
            match = re.search(r"event=server.listening .*port=(\d+)", text)
            port = match.group(1) if match else None
            await asyncio.sleep(0.05)
        self.address = f"127.0.0.1:{port}"
        async with grpc.aio.insecure_channel(self.address) as channel:
            health = health_pb2_grpc.HealthStub(channel)
            reply = await health.Check(health_pb2.HealthCheckRequest(), wait_for_ready=True, timeout=within)
            assert reply.status == health_pb2.HealthCheckResponse.SERVING
        return self.address

    def rss(self) -> int:
        return int(self.ps.memory_info().rss)

    def stop(self) -> None:
        self.process.terminate()
        try:
            self.process.wait(15)
        except subprocess.TimeoutExpired:
            self.process.kill()
        shutil.rmtree(self.log_dir, ignore_errors=True)


async def run_one(stub: gateway_pb2_grpc.GatewayServiceStub, request: gateway_pb2.JobRequest) -> Outcome:
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
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(fraction * (len(ordered) - 1)))]


async def sample_rss(gateway: GatewayProcess, peak: list[int], stop: asyncio.Event) -> None:
    while not stop.is_set():
        peak[0] = max(peak[0], gateway.rss())
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), 0.01)


async def main() -> dict[str, object]:
    request = gateway_pb2.JobRequest(prompt="a portrait", reference_image=png_bytes(64, 64))
    async with FakeUpstreams(keep_images=False) as fakes:
        gateway = GatewayProcess(fakes)
        try:
            address = await gateway.wait_serving()
            async with grpc.aio.insecure_channel(address, options=message_size_options(MAX_MESSAGE_BYTES)) \
                    as channel:
                stub = gateway_pb2_grpc.GatewayServiceStub(channel)
                return await measure(stub, fakes, gateway, request)
        finally:
            gateway.stop()


async def measure(stub: gateway_pb2_grpc.GatewayServiceStub, fakes: FakeUpstreams, gateway: GatewayProcess,
                  request: gateway_pb2.JobRequest) -> dict[str, object]:
    # 1. Overhead at concurrency 1.
    delays = Delays(upload=0.02, steps=5, step=0.01, swap=0.02)
    delays.apply(fakes)
    for _ in range(5):
        await run_one(stub, request)
    sequential = [await run_one(stub, request) for _ in range(SEQUENTIAL_JOBS)]
    overheads = [(o.seconds - o.upstream_seconds(fakes)) * 1000 for o in sequential]
    overhead_median = statistics.median(overheads)
    nominal = statistics.median((o.seconds - delays.critical_path) * 1000 for o in sequential)
    print(f"concurrency 1: {SEQUENTIAL_JOBS} jobs, scripted critical path {delays.critical_path * 1000:.0f} ms; "
          f"overhead beyond the upstream time the fakes measured: median {overhead_median:.1f} ms, "
          f"p90 {percentile(overheads, 0.9):.1f} ms; beyond the scripted path: median {nominal:.1f} ms; "
          f"{sum(not o.ok for o in sequential)} errors")

    # 2. Upload and generation overlap.
    delays = Delays(upload=0.3, steps=10, step=0.03, swap=0.0)
    delays.apply(fakes)
    overlap_runs = [await run_one(stub, request) for _ in range(5)]
    overlap = statistics.median(o.seconds for o in overlap_runs) / max(delays.upload, delays.steps * delays.step)
    print(f"overlap: upload 300 ms + generation 300 ms -> end-to-end / 300 ms = {overlap:.3f}")

    # 3a. Memory: hold all 500 jobs in flight at once, then let them finish.
    delays = Delays(upload=0.05, steps=10, step=0.02, swap=0.1)
    delays.apply(fakes)
    await asyncio.gather(*(run_one(stub, request) for _ in range(20)))
    baseline = gateway.rss()
    gate = asyncio.Event()
    fakes.generator.script.gate = gate
    peak = [baseline]
    stop_sampling = asyncio.Event()
    sampler = asyncio.create_task(sample_rss(gateway, peak, stop_sampling))
    held = [asyncio.create_task(run_one(stub, request)) for _ in range(CONCURRENT)]
    await fakes.generator.wait_for(lambda g: g.active >= CONCURRENT, within=120)
    at_gate = gateway.rss()
    gate.set()
    held_outcomes = await asyncio.gather(*held)
    stop_sampling.set()
    await sampler
    per_job_kb = (max(peak[0], at_gate) - baseline) / CONCURRENT / 1024
    print(f"memory: RSS {baseline / 2**20:.1f} MiB before, {at_gate / 2**20:.1f} MiB with {CONCURRENT} jobs "
          f"in flight, peak {peak[0] / 2**20:.1f} MiB -> {per_job_kb:.1f} KB per in-flight job "
          f"({sum(not o.ok for o in held_outcomes)} errors)")

    # 3b. Throughput and overhead with 500 concurrent streams, nothing held back.
    fakes.generator.script.gate = None
    started = time.perf_counter()
    outcomes = await asyncio.gather(*(run_one(stub, request) for _ in range(CONCURRENT)))
    wall = time.perf_counter() - started
    errors = [o.error for o in outcomes if not o.ok] + [o.error for o in held_outcomes if not o.ok]
    c500 = [(o.seconds - delays.critical_path) * 1000 for o in outcomes]
    c500_measured = [(o.seconds - o.upstream_seconds(fakes)) * 1000 for o in outcomes]
    events = sum(o.events for o in outcomes)
    print(f"{CONCURRENT} concurrent Run streams: wall {wall:.2f} s, scripted critical path "
          f"{delays.critical_path * 1000:.0f} ms, overhead beyond it p50 {percentile(c500, 0.5):.0f} ms, "
          f"p99 {percentile(c500, 0.99):.0f} ms (beyond the measured upstream time: p99 "
          f"{percentile(c500_measured, 0.99):.0f} ms), {events} events = {events / wall:.0f} events/s, "
          f"{len(errors)} errors{': ' + errors[0] if errors else ''}")
    print("(the clients and the fake upstreams share this process and the machine's cores with the gateway)")

    figures: dict[str, object] = {
        "overhead_c1_median_ms": round(overhead_median, 2),
        "overhead_c1_p90_ms": round(percentile(overheads, 0.9), 2),
        "overhead_c1_vs_scripted_median_ms": round(nominal, 2),
        "overhead_c1_target_ms": TARGET_OVERHEAD_MS,
        "overlap_ratio": round(overlap, 3),
        "overlap_target": TARGET_OVERLAP,
        "c500_errors": len(errors),
        "c500_errors_target": 0,
        "c500_overhead_p50_ms": round(percentile(c500, 0.5), 1),
        "c500_overhead_p99_ms": round(percentile(c500, 0.99), 1),
        "c500_overhead_vs_measured_p99_ms": round(percentile(c500_measured, 0.99), 1),
        "c500_events_per_s": round(events / wall),
        "c500_wall_s": round(wall, 2),
        "rss_growth_per_inflight_job_kb": round(per_job_kb, 1),
        "rss_target_kb": TARGET_RSS_KB,
        "cpu_cores": os.cpu_count(),
    }
    figures["targets_met"] = (overhead_median <= TARGET_OVERHEAD_MS and overlap <= TARGET_OVERLAP
                              and not errors and per_job_kb <= TARGET_RSS_KB)
    return figures


if __name__ == "__main__":
    print(json.dumps(asyncio.run(main())))
