"""Scale-out benchmark: gateway replicas on one Redis, measured in one run on this machine.

Part 1, the real stack (generator, swapper, S3, the RunPod emulator with the
real worker, Redis, two gateways with ``GATEWAY_LEASE_SECONDS`` of LEASE_S):
20 kill-and-resume runs. Each run submits a job, waits until it is in a given
phase (denoising, or its RunPod job in flight), SIGKILLs the gateway holding
it, follows the job on the other gateway from the last event seen, and
restarts the killed one. Figures: seconds from the SIGKILL to the job's next
event (failover), /run requests beyond one per image at the endpoint
(duplicate remote submissions), and events lost or seen twice.

Part 2, one gateway process per store in front of the fake upstreams (in this
process), jobs alternating between them: per-event latency (the client's
receive time minus the event's own timestamp) and gateway CPU per job (a job of
the catalog's default 20 steps; 40-step jobs too, and the Redis store's CPU per
event from the difference).

Part 3, two Redis gateways, 50 jobs and 1,000 concurrent Watch streams (half
on each gateway): streams that failed or saw a wrong sequence, and Redis
memory per finished job (INFO used_memory before and after).

Human lines first; the last line is one JSON object with the figures and
targets. Run: ``.venv/bin/python bench/scaleout.py`` (``--skip-stack`` leaves
out part 1).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "protos")]

import grpc  # noqa: E402

from bench.support.gateway_runner import cpu_seconds, percentile  # noqa: E402
from facegen.v1 import gateway_pb2, gateway_pb2_grpc  # noqa: E402
from tests.fakes.grpc_upstreams import FakeUpstreams, GeneratorScript, SwapScript, png_bytes  # noqa: E402
from tests.gateway_process import GatewayProcess  # noqa: E402
from tests.redis_server import RedisServer  # noqa: E402

LEASE_S = 2.0
KILL_RUNS = 20
LATENCY_JOBS = 40
WATCH_JOBS = 50
WATCHERS_PER_JOB = 20
TARGETS = {"failover_s": 5.0, "duplicate_remote_submissions": 0, "lost_or_duplicated_events": 0,
           "redis_added_p50_ms": 2.0, "cpu_ratio": 1.5, "watch_errors": 0}


async def run_job(stub: gateway_pb2_grpc.GatewayServiceStub, request: gateway_pb2.JobRequest,
                  latencies: list[float]) -> bool:
    """Runs one job through Run, recording each event's latency in ms; True when it completed."""
    last = None
    async for event in stub.Run(request):
        latencies.append((time.time_ns() - event.time.ToNanoseconds()) / 1e6)
        last = event
    return last is not None and last.result.state == gateway_pb2.JOB_STATE_COMPLETED


async def alternate(replicas: list[GatewayProcess], request: gateway_pb2.JobRequest,
                    jobs: int) -> tuple[dict[str, list[float]], dict[str, float], int]:
    """Runs ``jobs`` jobs on each replica, alternating: each event's latency, CPU seconds per job, failures."""
    latencies: dict[str, list[float]] = {replica.name: [] for replica in replicas}
    cpu = {replica.name: 0.0 for replica in replicas}
    failures = 0
    for _ in range(jobs):
        for replica in replicas:
            before = cpu_seconds(replica.pid)
            failures += not await run_job(replica.stub, request, latencies[replica.name])
            cpu[replica.name] += cpu_seconds(replica.pid) - before
    return latencies, {name: seconds / jobs for name, seconds in cpu.items()}, failures


async def latency_and_cpu(fakes: FakeUpstreams, redis: RedisServer, work: Path) -> dict[str, float]:
    """Part 2: the same jobs through a memory gateway and a Redis gateway, alternating.

    The job measured against the target is the catalog's default: 20 denoising steps and a
    swap with its remote statuses (~30 events). Jobs of 40 steps show how the difference
    grows with the number of events, and give the Redis store's cost per event.
    """
    fakes.swapper.script = SwapScript(delay=0.02)
    common = {"GENERATOR_ADDRESS": fakes.generator_address, "SWAPPER_ADDRESS": fakes.swapper_address}
    memory = GatewayProcess("memory", work, common)
    shared = GatewayProcess("redis", work, {**common, "GATEWAY_STORE": "redis", "REDIS_URL": redis.url})
    await asyncio.gather(memory.start(), shared.start())
    request = gateway_pb2.JobRequest(prompt="a portrait", reference_image=png_bytes(64, 64))
    try:
        fakes.generator.script = GeneratorScript(steps=20, step_delay=0.005)
        await alternate([memory, shared], request, 5)
        latencies, cpu, failures = await alternate([memory, shared], request, LATENCY_JOBS)
        events = len(latencies["redis"]) / LATENCY_JOBS
        fakes.generator.script = GeneratorScript(steps=40, step_delay=0.005)
        long_latencies, long_cpu, long_failures = await alternate([memory, shared], request, LATENCY_JOBS)
        long_events = len(long_latencies["redis"]) / LATENCY_JOBS
    finally:
        await memory.close()
        await shared.close()
    figures = {f"{name}_p{int(q * 100)}_ms": round(percentile(values, q), 3)
               for name, values in latencies.items() for q in (0.5, 0.99)}
    figures["redis_added_p50_ms"] = round(figures["redis_p50_ms"] - figures["memory_p50_ms"], 3)
    figures["memory_cpu_ms_per_job"] = round(cpu["memory"] * 1000, 2)
    figures["redis_cpu_ms_per_job"] = round(cpu["redis"] * 1000, 2)
    figures["cpu_ratio"] = round(cpu["redis"] / cpu["memory"], 3)
    figures["events_per_job"] = round(events)
    figures["cpu_ratio_40_steps"] = round(long_cpu["redis"] / long_cpu["memory"], 3)
    per_event = ((long_cpu["redis"] - long_cpu["memory"]) - (cpu["redis"] - cpu["memory"])) / (long_events - events)
    figures["redis_cpu_us_per_event"] = round(per_event * 1e6)
    figures["latency_job_failures"] = failures + long_failures
    print(f"event latency over {LATENCY_JOBS} jobs of ~{events:.0f} events each: memory p50 "
          f"{figures['memory_p50_ms']} ms p99 {figures['memory_p99_ms']} ms; Redis p50 {figures['redis_p50_ms']} ms "
          f"p99 {figures['redis_p99_ms']} ms (Redis adds {figures['redis_added_p50_ms']} ms at p50)")
    print(f"gateway CPU per job (20 steps, ~{events:.0f} events): memory {figures['memory_cpu_ms_per_job']} ms, "
          f"Redis {figures['redis_cpu_ms_per_job']} ms ({figures['cpu_ratio']}x); with 40 steps "
          f"({long_events:.0f} events) {figures['cpu_ratio_40_steps']}x; the Redis store costs about "
          f"{figures['redis_cpu_us_per_event']} µs of gateway CPU per event; "
          f"{figures['latency_job_failures']} jobs failed")
    return figures


async def watch_one(stub: gateway_pb2_grpc.GatewayServiceStub, job_id: str) -> bool:
    """True when the stream delivered seq 1, 2, 3, ... and ended with the terminal event."""
    seqs = []
    last = None
    try:
        async for event in stub.Watch(gateway_pb2.WatchRequest(job_id=job_id)):
            seqs.append(event.seq)
            last = event
    except grpc.aio.AioRpcError:
        return False
    return (last is not None and last.stage == gateway_pb2.STAGE_TERMINAL
            and seqs == list(range(1, len(seqs) + 1)))


async def many_watchers(fakes: FakeUpstreams, redis: RedisServer, work: Path) -> dict[str, float]:
    """Part 3: 1,000 concurrent Watch streams over two Redis gateways."""
    fakes.generator.script = GeneratorScript(steps=20, step_delay=0.05)
    fakes.swapper.script = SwapScript(delay=0.1)
    env = {"GENERATOR_ADDRESS": fakes.generator_address, "SWAPPER_ADDRESS": fakes.swapper_address,
           "GATEWAY_STORE": "redis", "REDIS_URL": redis.url, "GATEWAY_MAX_RUNNING_JOBS": str(WATCH_JOBS),
           "GATEWAY_MAX_QUEUED_JOBS": "64"}
    gateways = [GatewayProcess(f"watch-{number}", work, env) for number in range(2)]
    await asyncio.gather(*(gateway.start() for gateway in gateways))
    with redis.client() as client:
        client.flushall()
        memory_before = int(client.info("memory")["used_memory"])
    request = gateway_pb2.JobRequest(prompt="a portrait", reference_image=png_bytes(64, 64))
    started = time.perf_counter()
    try:
        jobs = [await gateways[number % 2].stub.Submit(request) for number in range(WATCH_JOBS)]
        watchers = [watch_one(gateways[number % 2].stub, job.job_id)
                    for job in jobs for number in range(WATCHERS_PER_JOB)]
        outcomes = await asyncio.gather(*watchers)
    finally:
        for gateway in gateways:
            await gateway.close()
    wall = time.perf_counter() - started
    with redis.client() as client:
        memory_after = int(client.info("memory")["used_memory"])
    errors = sum(not ok for ok in outcomes)
    per_job = (memory_after - memory_before) / WATCH_JOBS
    print(f"{len(outcomes)} concurrent Watch streams on two gateways over {WATCH_JOBS} jobs: {errors} errors, "
          f"{wall:.1f} s; Redis memory {per_job / 1024:.1f} KiB per finished job")
    return {"watch_streams": len(outcomes), "watch_errors": errors, "watch_wall_s": round(wall, 2),
            "redis_bytes_per_finished_job": round(per_job)}


async def fake_parts(work: Path) -> dict[str, float]:
    redis = RedisServer(work / "redis", appendonly=True).start()
    try:
        async with FakeUpstreams(keep_images=False) as fakes:
            figures = await latency_and_cpu(fakes, redis, work)
            figures.update(await many_watchers(fakes, redis, work))
    finally:
        redis.stop()
    return figures


async def main(skip_stack: bool) -> dict[str, object]:
    with tempfile.TemporaryDirectory(prefix="scaleout-bench-") as directory:
        work = Path(directory)
        figures: dict[str, object] = {}
        if not skip_stack:
            from bench.support.scaleout_failover import failover_runs  # the real stack: slow to import and start

            figures.update(await asyncio.to_thread(failover_runs, work / "stack", KILL_RUNS, LEASE_S))
        figures.update(await fake_parts(work))
    figures["lease_seconds"] = LEASE_S
    figures["load_average_1m"] = round(os.getloadavg()[0], 2)
    figures["targets"] = TARGETS
    met = [figures.get("redis_added_p50_ms", 99) <= TARGETS["redis_added_p50_ms"],
           figures.get("cpu_ratio", 99) <= TARGETS["cpu_ratio"],
           figures.get("watch_errors", 1) == TARGETS["watch_errors"]]
    if not skip_stack:
        met += [figures.get("failover_p50_s", 99) <= TARGETS["failover_s"],
                figures.get("duplicate_remote_submissions", 1) == 0,
                figures.get("lost_or_duplicated_events", 1) == 0]
    figures["targets_met"] = all(met)
    return figures


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--skip-stack", action="store_true", help="leave out the kill-and-resume runs")
    args = parser.parse_args()
    print(json.dumps(asyncio.run(main(args.skip_stack))))
