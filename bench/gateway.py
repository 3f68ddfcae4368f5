"""Gateway benchmark: overhead, overlap of upload and generation, 500 concurrent Run streams, and what
metrics and tracing cost.

Two gateways run side by side as processes of their own (``python -m
services.gateway``, logging at INFO to a file, as in production) in front of
the fake generator and swapper from tests/fakes, which run in this process
with fixed delays:

- "off": no metrics endpoint, no tracing (the defaults);
- "on": ``GATEWAY_METRICS_LISTEN`` set and scraped once a second, spans
  exported over OTLP with the sampler always on (``--sampler``/``--sampler-arg``
  choose another, e.g. ``parentbased_traceidratio`` and ``0.1``), both to
  bench/support/telemetry_sink.py (an OTLP receiver and a scraper in a process of its
  own, so that they cost nothing in this event loop).

The figures:

- overhead at concurrency 1: end-to-end time of a Run minus the upstream
  critical path (max(upload, generation) + swap) as the fakes measured it
  (their sleeps run late on a busy machine; that lateness is theirs, not the
  gateway's), median over SEQUENTIAL_JOBS jobs on each gateway, the two
  alternating job by job so that drift on a shared machine cancels out; the
  off median is the gateway's overhead, on minus off what observing adds;
- overlap (off): upload 300 ms and generation 300 ms; end-to-end / 300 ms;
- memory (off): the gateway's RSS growth per in-flight job, all 500 held in
  flight at once by the fake generator (peak RSS minus the RSS before);
- 500 concurrent Run streams: ROUNDS rounds of one burst on each gateway
  (which goes first alternates); errors and overhead p50/p99 (off), events
  delivered per second on each, on/off as the median of the rounds' ratios,
  gateway CPU per job on each and the capacity a CPU-bound gateway loses to
  observing (1 - CPU off / CPU on: on two shared cores events/s is bound by
  the clients and fakes as much as by the gateway);
- what the sink got: spans and traces (one trace per job on the "on"
  gateway), scrapes, and the jobs the last scrape counted.

Human lines first, with the 1-minute load average; the last line is one JSON
object with figures and targets. Run: ``.venv/bin/python bench/gateway.py``;
with ``BENCH_PROFILE_DIR=<dir>`` both gateways run under bench/support/profiled.py and
leave CPU-time profiles of all their threads there (``off.pstats``, ``on.pstats``).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import statistics
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "protos")]

import psutil  # noqa: E402

from bench.support.gateway_runner import Delays, Outcome, cpu_seconds, percentile, run_one  # noqa: E402
from bench.support.telemetry_sink import TelemetrySink  # noqa: E402
from facegen.v1 import gateway_pb2  # noqa: E402
from tests.fakes.grpc_upstreams import FakeUpstreams, png_bytes  # noqa: E402
from tests.gateway_process import GatewayProcess  # noqa: E402
from tests.redis_server import free_port  # noqa: E402

CONCURRENT = 500
SEQUENTIAL_JOBS = 150
ROUNDS = 12
# The span processor's batch delay (OTEL_BSP_SCHEDULE_DELAY, 5 s by default): a sampled bench waits that long for news.
EXPORT_DELAY_S = 5.0
TARGETS: dict[str, float] = {"overhead_c1_ms": 15.0, "overlap": 1.10, "c500_errors": 0,
                             "rss_per_inflight_job_kb": 100.0, "observed_c1_added_p50_ms": 1.0,
                             "observed_c500_throughput_lost_pct": 5.0, "observed_c500_capacity_lost_pct": 5.0}


def load() -> float:
    """The 1-minute load average, printed beside every figure (the machine is shared)."""
    return round(os.getloadavg()[0], 2)


def gateway_process(name: str, work: Path, env: dict[str, str]) -> GatewayProcess:
    """A gateway process; with BENCH_PROFILE_DIR set, under bench/support/profiled.py (``<name>.pstats``)."""
    profile_dir = os.environ.get("BENCH_PROFILE_DIR")
    if not profile_dir:
        return GatewayProcess(name, work, env)
    out = str(Path(profile_dir).resolve() / f"{name}.pstats")
    return GatewayProcess(name, work, env, python_args=("-m", "bench.support.profiled", out, "services.gateway"))


async def stop(gateway: GatewayProcess) -> None:
    """SIGTERM, so that the gateway exports its last spans (and a profiled one writes its statistics)."""
    if gateway.process is not None and gateway.process.returncode is None:
        gateway.terminate()
        with contextlib.suppress(TimeoutError):
            await gateway.wait(30)
    await gateway.close()


async def main(sampler: str, sampler_arg: str | None) -> dict[str, object]:
    load_start = load()
    with tempfile.TemporaryDirectory(prefix="gateway-bench-") as work:
        async with FakeUpstreams(keep_images=False) as fakes:
            common = {"GENERATOR_ADDRESS": fakes.generator_address, "SWAPPER_ADDRESS": fakes.swapper_address,
                      "GATEWAY_MAX_RUNNING_JOBS": str(CONCURRENT + 12), "GATEWAY_MAX_QUEUED_JOBS": "64",
                      "GATEWAY_MAX_JOBS": "5000", "GATEWAY_LOG_LEVEL": "INFO"}
            metrics_listen = f"127.0.0.1:{free_port()}"
            sink = await TelemetrySink(f"http://{metrics_listen}/metrics").start(
                {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), str(ROOT / "protos")])})
            off = gateway_process("off", Path(work), common)
            on = gateway_process("on", Path(work), {
                **common, "GATEWAY_METRICS_LISTEN": metrics_listen, "OTEL_EXPORTER_OTLP_ENDPOINT": sink.endpoint,
                "OTEL_TRACES_SAMPLER": sampler, **({"OTEL_TRACES_SAMPLER_ARG": sampler_arg} if sampler_arg else {})})
            try:
                await asyncio.gather(off.start(), on.start())
                figures = await measure(fakes, off, on, sink, every_job_traced=sampler == "always_on")
                figures["sampler"] = f"{sampler}:{sampler_arg}" if sampler_arg else sampler
            finally:
                await asyncio.gather(stop(off), stop(on))
                await sink.close()
    figures["load_average_1m_start"] = load_start
    figures["load_average_1m_end"] = load()
    figures["cpu_cores"] = os.cpu_count()
    figures["targets"] = TARGETS
    figures["targets_met"] = all([
        figures["overhead_c1_median_ms"] <= TARGETS["overhead_c1_ms"],
        figures["overlap_ratio"] <= TARGETS["overlap"],
        figures["c500_errors"] == 0 and figures["c500_on_errors"] == 0,
        figures["rss_growth_per_inflight_job_kb"] <= TARGETS["rss_per_inflight_job_kb"],
        figures["observed_c1_added_p50_ms"] <= TARGETS["observed_c1_added_p50_ms"],
        figures["observed_c500_throughput_lost_pct"] <= TARGETS["observed_c500_throughput_lost_pct"],
        figures["observed_c500_capacity_lost_pct"] <= TARGETS["observed_c500_capacity_lost_pct"],
        figures["one_trace_per_job"]])
    return figures


async def measure(fakes: FakeUpstreams, off: GatewayProcess, on: GatewayProcess,
                  sink: TelemetrySink, every_job_traced: bool) -> dict[str, Any]:
    request = gateway_pb2.JobRequest(prompt="a portrait", reference_image=png_bytes(64, 64))
    jobs_on = 0
    figures: dict[str, Any] = {}

    # 1. Overhead at concurrency 1, off and on alternating job by job (and which goes first, pair by pair).
    delays = Delays(upload=0.02, steps=5, step=0.01, swap=0.02)
    delays.apply(fakes)
    sequential: dict[str, list[Outcome]] = {"off": [], "on": []}
    for number in range(5 + SEQUENTIAL_JOBS):
        for gateway in (off, on) if number % 2 == 0 else (on, off):
            outcome = await run_one(gateway.stub, request)
            if number >= 5:  # the first five of each warm up
                sequential[gateway.name].append(outcome)
    jobs_on += 5 + SEQUENTIAL_JOBS
    overheads = {name: [o.overhead_ms(fakes) for o in outcomes] for name, outcomes in sequential.items()}
    median = {name: statistics.median(values) for name, values in overheads.items()}
    nominal = statistics.median((o.seconds - delays.critical_path) * 1000 for o in sequential["off"])
    added = median["on"] - median["off"]
    errors = sum(not o.ok for outcomes in sequential.values() for o in outcomes)
    print(f"concurrency 1: {SEQUENTIAL_JOBS} jobs on each gateway, alternating; scripted critical path "
          f"{delays.critical_path * 1000:.0f} ms; overhead beyond the upstream time the fakes measured: off median "
          f"{median['off']:.2f} ms (p90 {percentile(overheads['off'], 0.9):.1f} ms; beyond the scripted path "
          f"{nominal:.1f} ms), on median {median['on']:.2f} ms (p90 {percentile(overheads['on'], 0.9):.1f} ms) -> "
          f"observing adds {added:.2f} ms per job at p50; {errors} errors; load {load()}")
    figures.update({"overhead_c1_median_ms": round(median["off"], 2),
                    "overhead_c1_p90_ms": round(percentile(overheads["off"], 0.9), 2),
                    "overhead_c1_vs_scripted_median_ms": round(nominal, 2),
                    "observed_c1_on_median_ms": round(median["on"], 2),
                    "observed_c1_added_p50_ms": round(added, 2), "c1_errors": errors})

    # 2. Upload and generation overlap (off).
    delays = Delays(upload=0.3, steps=10, step=0.03, swap=0.0)
    delays.apply(fakes)
    overlap_runs = [await run_one(off.stub, request) for _ in range(5)]
    overlap = statistics.median(o.seconds for o in overlap_runs) / max(delays.upload, delays.steps * delays.step)
    print(f"overlap: upload 300 ms + generation 300 ms -> end-to-end / 300 ms = {overlap:.3f}; load {load()}")
    figures["overlap_ratio"] = round(overlap, 3)

    # 3a. Memory (off): hold all 500 jobs in flight at once, then let them finish.
    delays = Delays(upload=0.05, steps=10, step=0.02, swap=0.1)
    delays.apply(fakes)
    figures.update(await memory_per_job(fakes, off, request))
    await asyncio.gather(*(run_one(on.stub, request) for _ in range(20)))  # warms "on" as 3a warmed "off"
    jobs_on += 20

    # 3b. 500 concurrent streams, nothing held back: bursts alternating between the gateways.
    bursts: dict[str, list[Burst]] = {"off": [], "on": []}
    for number in range(ROUNDS):
        for gateway in (off, on) if number % 2 == 0 else (on, off):
            cpu_before = cpu_seconds(gateway.pid)
            started = time.perf_counter()
            outcomes = await asyncio.gather(*(run_one(gateway.stub, request) for _ in range(CONCURRENT)))
            bursts[gateway.name].append(Burst(time.perf_counter() - started, cpu_seconds(gateway.pid) - cpu_before,
                                              outcomes))
    jobs_on += ROUNDS * CONCURRENT
    figures.update(throughput(fakes, delays, bursts))

    figures.update(await telemetry_received(sink, jobs_on, every_job_traced))
    print("(the clients and the fake upstreams share this process, and the sink its process, with the gateways "
          "on the machine's cores)")
    return figures


async def memory_per_job(fakes: FakeUpstreams, gateway: GatewayProcess,
                         request: gateway_pb2.JobRequest) -> dict[str, Any]:
    """RSS growth per in-flight job, with CONCURRENT jobs held in flight by the fake generator."""
    process = psutil.Process(gateway.pid)
    await asyncio.gather(*(run_one(gateway.stub, request) for _ in range(20)))
    baseline = process.memory_info().rss
    gate = asyncio.Event()
    fakes.generator.script.gate = gate
    peak = [baseline]
    stop_sampling = asyncio.Event()

    async def sample() -> None:
        while not stop_sampling.is_set():
            peak[0] = max(peak[0], process.memory_info().rss)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop_sampling.wait(), 0.01)

    sampler = asyncio.create_task(sample())
    held = [asyncio.create_task(run_one(gateway.stub, request)) for _ in range(CONCURRENT)]
    await fakes.generator.wait_for(lambda g: g.active >= CONCURRENT, within=120)
    at_gate = process.memory_info().rss
    gate.set()
    outcomes = await asyncio.gather(*held)
    stop_sampling.set()
    await sampler
    fakes.generator.script.gate = None
    per_job_kb = (max(peak[0], at_gate) - baseline) / CONCURRENT / 1024
    errors = [o.error for o in outcomes if not o.ok]
    print(f"memory: RSS {baseline / 2**20:.1f} MiB before, {at_gate / 2**20:.1f} MiB with {CONCURRENT} jobs "
          f"in flight, peak {peak[0] / 2**20:.1f} MiB -> {per_job_kb:.1f} KB per in-flight job "
          f"({len(errors)} errors); load {load()}")
    return {"rss_growth_per_inflight_job_kb": round(per_job_kb, 1), "memory_errors": errors[:1]}


@dataclass
class Burst:
    """CONCURRENT jobs started at once on one gateway: how long they took, the gateway's CPU time, the outcomes."""

    wall: float
    cpu: float
    outcomes: list[Outcome]

    @property
    def events_per_s(self) -> float:
        return sum(o.events for o in self.outcomes) / self.wall


def throughput(fakes: FakeUpstreams, delays: Delays, bursts: dict[str, list[Burst]]) -> dict[str, Any]:
    """The figures of the 500-stream bursts; "on" against "off" is the median of the ratios of each round's
    two bursts (a round whose load the machine's other work changed weighs no more than one)."""
    cpu_ms: dict[str, float] = {}
    errors: dict[str, list[str]] = {}
    c500: dict[str, list[float]] = {}
    measured: dict[str, list[float]] = {}
    for name, runs in bursts.items():
        outcomes = [o for burst in runs for o in burst.outcomes]
        cpu_ms[name] = sum(burst.cpu for burst in runs) / len(outcomes) * 1000
        errors[name] = [o.error for o in outcomes if not o.ok]
        c500[name] = [(o.seconds - delays.critical_path) * 1000 for o in outcomes]
        measured[name] = [o.overhead_ms(fakes) for o in outcomes]
        rates = ", ".join(f"{burst.events_per_s:.0f}" for burst in runs)
        print(f"{CONCURRENT} concurrent Run streams, {name}, {len(runs)} bursts: wall "
              f"{statistics.mean(burst.wall for burst in runs):.2f} s each, scripted critical path "
              f"{delays.critical_path * 1000:.0f} ms, overhead beyond it p50 {percentile(c500[name], 0.5):.0f} ms, "
              f"p99 {percentile(c500[name], 0.99):.0f} ms (beyond the measured upstream time: p99 "
              f"{percentile(measured[name], 0.99):.0f} ms), events/s {rates}, gateway CPU {cpu_ms[name]:.2f} ms "
              f"per job, {len(errors[name])} errors{': ' + errors[name][0] if errors[name] else ''}; load {load()}")
    ratios = [on.events_per_s / off.events_per_s for off, on in zip(bursts["off"], bursts["on"], strict=True)]
    ratio = statistics.median(ratios)
    rate = {name: statistics.median(burst.events_per_s for burst in runs) for name, runs in bursts.items()}
    # The clients and fakes share two cores with the gateways, so events/s is not bound by the gateway alone;
    # a gateway that is (one event loop, CPU-bound) loses 1 - off/on of its capacity to the CPU observing takes.
    capacity_lost = (1 - cpu_ms["off"] / cpu_ms["on"]) * 100
    print(f"observing at {CONCURRENT} streams: events/s on / off, round by round: "
          f"{', '.join(f'{r:.3f}' for r in ratios)} -> median {ratio:.3f} ({(1 - ratio) * 100:.1f} % lost); "
          f"gateway CPU per job {cpu_ms['on'] / cpu_ms['off']:.3f}x ({capacity_lost:.1f} % of a CPU-bound "
          f"gateway's capacity); load {load()}")
    return {
        "c500_errors": len(errors["off"]), "c500_overhead_p50_ms": round(percentile(c500["off"], 0.5), 1),
        "c500_overhead_p99_ms": round(percentile(c500["off"], 0.99), 1),
        "c500_overhead_vs_measured_p99_ms": round(percentile(measured["off"], 0.99), 1),
        "c500_wall_s": round(statistics.mean(burst.wall for burst in bursts["off"]), 2),
        "c500_events_per_s": round(rate["off"]), "c500_on_errors": len(errors["on"]),
        "c500_on_events_per_s": round(rate["on"]), "observed_c500_throughput_ratio": round(ratio, 3),
        "observed_c500_throughput_ratio_by_round": [round(r, 3) for r in ratios],
        "observed_c500_throughput_lost_pct": round((1 - ratio) * 100, 2),
        "c500_gateway_cpu_ms_per_job": round(cpu_ms["off"], 2),
        "c500_on_gateway_cpu_ms_per_job": round(cpu_ms["on"], 2),
        "observed_c500_capacity_lost_pct": round(capacity_lost, 2)}


async def telemetry_received(sink: TelemetrySink, jobs_on: int, every_job_traced: bool,
                             within_s: float = 30.0) -> dict[str, Any]:
    """What the sink got, once a job span of every job on "on" has arrived (spans are exported in batches,
    every few seconds), or, with a sampler that leaves jobs out, once nothing new came for a batch
    delay; or when ``within_s`` has passed. ``one_trace_per_job``: each trace received is one job's."""
    deadline = time.monotonic() + within_s
    got = await sink.report()
    quiet_since = time.monotonic()
    while time.monotonic() < deadline:
        if every_job_traced and got["traces_with_a_job_span"] >= jobs_on:
            break
        if not every_job_traced and time.monotonic() - quiet_since > EXPORT_DELAY_S + 1:
            break
        await asyncio.sleep(0.5)
        before, got = got, await sink.report()
        if got["spans"] != before["spans"]:
            quiet_since = time.monotonic()
    traced = jobs_on if every_job_traced else got["job_spans"]
    one_trace_per_job = got["traces"] == got["job_spans"] == got["traces_with_a_job_span"] == traced
    sink_cpu = psutil.Process(sink.pid).cpu_times()
    print(f"telemetry: {got['spans']} spans in {got['traces']} traces for {jobs_on} jobs on 'on' "
          f"({got['job_spans']} job spans; one trace per job: {one_trace_per_job}), spans by name "
          f"{got['spans_by_name']}; {got['scrapes']} scrapes of /metrics (p50 {got['scrape_ms_p50']} ms, max "
          f"{got['scrape_ms_max']} ms, {got['scrape_bytes']} bytes, {got['scrape_failures']} failed), the last "
          f"counting {got['jobs_finished_scraped']} finished jobs; the sink used "
          f"{sink_cpu.user + sink_cpu.system:.1f} s of CPU; load {load()}")
    return {"jobs_on": jobs_on, "jobs_traced": got["job_spans"], "spans_received": got["spans"],
            "traces_received": got["traces"],
            "job_spans_received": got["job_spans"], "one_trace_per_job": one_trace_per_job,
            "spans_per_job": round(got["spans"] / max(1, got["job_spans"]), 2), "scrapes": got["scrapes"],
            "scrape_failures": got["scrape_failures"], "scrape_ms_p50": got["scrape_ms_p50"],
            "jobs_finished_scraped": got["jobs_finished_scraped"],
            "sink_cpu_s": round(sink_cpu.user + sink_cpu.system, 2)}


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sampler", default="always_on",
                        help="OTEL_TRACES_SAMPLER of the observed gateway (default: always_on)")
    parser.add_argument("--sampler-arg", help="its OTEL_TRACES_SAMPLER_ARG, e.g. 0.1 for a ratio sampler")
    args = parser.parse_args()
    print(json.dumps(asyncio.run(main(args.sampler, args.sampler_arg))))
