"""Generator benchmark: service overhead, batching gain and peak memory, measured in one run.

    HF_HUB_OFFLINE=1 .venv/bin/python bench/generator.py                 # tiny model on the CPU
    HF_HUB_OFFLINE=1 .venv/bin/python bench/generator.py --device cuda \\
        --catalog my-catalog.toml --model sdxl --width 1024 --height 1024 --steps 30

1. Overhead: one Generate call through gRPC to a running service, against the
   same pipeline (loaded by the same code) called directly in this process with
   the same settings; median of --runs runs each, interleaved so drift in the
   machine's load hits both alike. The service runs its pipeline under
   torch.inference_mode; a direct call made that way too is measured beside the
   plain one, so the figure for what the service adds alone is there. Where a model's tensors land in memory moves
   its speed by a few percent from one load to the next, so the runs rotate over
   --processes service processes and as many copies loaded here.
2. Batching: --concurrency concurrent requests (same settings, different
   prompts and seeds), images per second with batching against a second
   service started with GENERATOR_MAX_BATCH=1.
3. Peak RSS of the batching service process (VmHWM) after everything above.

Human-readable lines first; the last line is one JSON object with the figures and targets.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import re
import statistics
import sys
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import psutil

from facegen.v1 import generator_pb2, generator_pb2_grpc
from services.common.channel import internal_channel

REPO_ROOT = Path(__file__).resolve().parents[1]

OVERHEAD_TARGET = 1.10
BATCHING_TARGET = 1.5
RSS_TARGET_MB = 1536


@dataclass
class Service:
    """A generator started as its own process."""

    process: asyncio.subprocess.Process
    port: int
    log: list[str]
    reader: asyncio.Task[None]

    def peak_rss_mb(self) -> float:
        """Peak resident set size of the service and its device process, summed (VmHWM on Linux)."""
        main = psutil.Process(self.process.pid)
        return sum(_peak_rss_mb(item) for item in [main, *main.children(recursive=True)])


def _peak_rss_mb(process: psutil.Process) -> float:
    """One process's peak resident set size (VmHWM on Linux, current RSS elsewhere)."""
    status = Path(f"/proc/{process.pid}/status")
    if status.exists():
        match = re.search(r"VmHWM:\s+(\d+) kB", status.read_text())
        if match:
            return int(match[1]) / 1024
    return float(process.memory_info().rss) / 2**20


@contextlib.asynccontextmanager
async def service(args: argparse.Namespace, **env: str) -> AsyncIterator[Service]:
    """Runs ``python -m services.generator`` until the block ends; yields once it reports SERVING."""
    full_env = {**os.environ, "HF_HUB_OFFLINE": "1", "GENERATOR_LISTEN": "127.0.0.1:0",
                "GENERATOR_DEVICE": args.device, "GENERATOR_GRACE_SECONDS": "1", **env}
    if args.catalog:
        full_env["GENERATOR_CATALOG"] = args.catalog
    if args.models_dir:
        full_env["GENERATOR_MODELS_DIR"] = args.models_dir
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "services.generator", cwd=REPO_ROOT, env=full_env,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT)
    log: list[str] = []
    port_found = asyncio.get_running_loop().create_future()
    serving = asyncio.Event()

    async def read() -> None:
        assert process.stdout is not None
        while line := (await process.stdout.readline()).decode(errors="replace"):
            log.append(line)
            match = re.search(r"event=server\.listening .* port=(\d+)", line)
            if match and not port_found.done():
                port_found.set_result(int(match[1]))
            if "event=server.serving" in line:
                serving.set()

    reader = asyncio.create_task(read())
    try:
        port = await asyncio.wait_for(port_found, 300)
        await asyncio.wait_for(serving.wait(), 600)
        yield Service(process, port, log, reader)
    except TimeoutError:
        raise SystemExit("the generator did not start; its log:\n" + "".join(log[-30:])) from None
    finally:
        if process.returncode is None:
            process.terminate()
            try:
                await asyncio.wait_for(process.wait(), 30)
            except TimeoutError:
                process.kill()
                await process.wait()
        reader.cancel()


def request(args: argparse.Namespace, prompt: str, seed: int) -> generator_pb2.GenerateRequest:
    """The benchmark's request: the model's default guidance, the chosen size and steps."""
    return generator_pb2.GenerateRequest(model=args.model, prompt=prompt, width=args.width,
                                         height=args.height, steps=args.steps, seed=seed)


async def generate(stub: generator_pb2_grpc.GeneratorServiceStub, req: generator_pb2.GenerateRequest,
                   pipeline_ms: list[float] | None = None) -> int:
    """Runs one Generate call to its end; returns the number of images received.

    The service's own pipeline wall time (``done.duration_ms``) is appended to ``pipeline_ms``.
    """
    received = 0
    async for event in stub.Generate(req, timeout=600):
        kind = event.WhichOneof("event")
        if kind == "image":
            received += 1
        elif kind == "done" and pipeline_ms is not None:
            pipeline_ms.append(float(event.done.duration_ms))
    return received


def load_direct(args: argparse.Namespace, copies: int = 1) -> tuple[list[object], float, str]:
    """The same model loaded ``copies`` times in this process by the service's own loader.

    Returns (pipes, guidance, model).
    """

    from services.generator.catalog import load_catalog
    from services.generator.device import resolve_device, use_torch_threads
    from services.generator.pipelines import PipelineRegistry, quiet_libraries
    from services.generator.settings import DEFAULT_CATALOG, DEFAULT_MODELS_DIR

    quiet_libraries()
    catalog = load_catalog(Path(args.catalog) if args.catalog else DEFAULT_CATALOG,
                           Path(args.models_dir) if args.models_dir else DEFAULT_MODELS_DIR)
    device = resolve_device(args.device)
    use_torch_threads(0, device)  # what the service uses
    model_name = args.model or catalog.default_model
    spec = catalog.models[model_name]
    args.width = args.width or spec.default_width
    args.height = args.height or spec.default_height
    args.steps = args.steps or spec.default_steps
    pipes = [PipelineRegistry(catalog, device, 1, 1).get(model_name).pipe for _ in range(copies)]
    return pipes, spec.default_guidance, model_name


def run_direct(pipe: object, args: argparse.Namespace, guidance: float, prompt: str, seed: int,
               inference_mode: bool = False) -> float:
    """One direct pipeline call with the service's settings; returns seconds.

    A plain call by default, as a user of diffusers would make it; with ``inference_mode`` under
    ``torch.inference_mode()`` as the service runs it, which leaves only what the service adds.
    """
    import torch

    started = time.perf_counter()
    with torch.inference_mode(inference_mode):
        pipe(prompt=[prompt], height=args.height, width=args.width,  # type: ignore[operator]
             num_inference_steps=args.steps, guidance_scale=guidance, num_images_per_prompt=1,
             generator=[torch.Generator("cpu").manual_seed(seed)], output_type="pil")
    return time.perf_counter() - started


async def measure_overhead(args: argparse.Namespace, stubs: list[generator_pb2_grpc.GeneratorServiceStub],
                           stub_no_window: generator_pb2_grpc.GeneratorServiceStub,
                           pipes: list[object], guidance: float) -> dict[str, object]:
    """Median latency through gRPC against the direct call, interleaved run by run.

    ``stubs`` are the service processes as configured (with their batch window), ``pipes`` as many
    copies loaded here; run ``n`` uses copy ``n % len``. ``stub_no_window`` is a service with batching
    off, where a lone request never waits for company: the difference is the window's cost.
    """
    times: dict[str, list[float]] = {"direct": [], "direct_inference_mode": [], "grpc": [], "grpc_no_window": []}
    inside_ms: list[float] = []
    for warm in range(2):
        for pipe in pipes:
            run_direct(pipe, args, guidance, "warm-up", warm)
        for warm_stub in [*stubs, stub_no_window]:
            await generate(warm_stub, request(args, "warm-up", warm))
    order = list(times)
    for run in range(args.runs):
        copy = run % len(pipes)
        # Rotate which goes first, so none always follows another's leftovers.
        for path in order[run % len(order):] + order[:run % len(order)]:
            if path.startswith("direct"):
                times[path].append(await asyncio.to_thread(run_direct, pipes[copy], args, guidance,
                                                           "a lighthouse", run, path != "direct"))
                continue
            started = time.perf_counter()
            sink = inside_ms if path == "grpc" else None
            stub = stubs[copy] if path == "grpc" else stub_no_window
            assert await generate(stub, request(args, "a lighthouse", run), sink) == 1
            times[path].append(time.perf_counter() - started)
    medians = {path: statistics.median(values) * 1000 for path, values in times.items()}
    # The spread between copies: how much of the ratio is where the tensors happened to land.
    per_copy = [round(statistics.median(times["grpc"][i::len(pipes)])
                      / statistics.median(times["direct"][i::len(pipes)]), 3) for i in range(len(pipes))]
    pipeline_ms = statistics.median(inside_ms)
    ratio = medians["grpc"] / medians["direct"]
    ratio_no_window = medians["grpc_no_window"] / medians["direct"]
    ratio_like_for_like = medians["grpc"] / medians["direct_inference_mode"]
    print(f"overhead: gRPC median {medians['grpc']:.1f} ms (pipeline call inside the service "
          f"{pipeline_ms:.0f} ms), direct median {medians['direct']:.1f} ms over {args.runs} runs "
          f"→ {ratio:.3f}x (target ≤ {OVERHEAD_TARGET}x); without the batch window "
          f"{medians['grpc_no_window']:.1f} ms → {ratio_no_window:.3f}x; per service process and copy "
          f"{per_copy}; against a direct call under torch.inference_mode as the service makes it "
          f"({medians['direct_inference_mode']:.1f} ms) → {ratio_like_for_like:.3f}x")
    return {"grpc_median_ms": round(medians["grpc"], 2), "direct_median_ms": round(medians["direct"], 2),
            "service_pipeline_median_ms": pipeline_ms,
            "grpc_no_batch_window_median_ms": round(medians["grpc_no_window"], 2),
            "ratio_no_batch_window": round(ratio_no_window, 4),
            "direct_inference_mode_median_ms": round(medians["direct_inference_mode"], 2),
            "ratio_vs_direct_inference_mode": round(ratio_like_for_like, 4),
            "ratio": round(ratio, 4), "ratio_per_process": per_copy, "runs": args.runs,
            "target_max": OVERHEAD_TARGET,
            "met": ratio <= OVERHEAD_TARGET}


async def burst(stub: generator_pb2_grpc.GeneratorServiceStub, args: argparse.Namespace, round_no: int) -> float:
    """``concurrency`` requests at once; returns images per second."""
    requests = [request(args, f"prompt {round_no}-{i}", 1000 * round_no + i) for i in range(args.concurrency)]
    started = time.perf_counter()
    counts = await asyncio.gather(*(generate(stub, req) for req in requests))
    elapsed = time.perf_counter() - started
    assert sum(counts) == args.concurrency
    return args.concurrency / elapsed


async def main(args: argparse.Namespace) -> dict[str, object]:
    print(f"loading {args.model or 'the default model'} in-process ({args.processes}x) and starting "
          f"{args.processes + 1} services "
          f"(device {args.device}) ...", flush=True)
    pipes, guidance, model_name = await asyncio.to_thread(load_direct, args, args.processes)
    print(f"model {model_name}: {args.width}x{args.height}, {args.steps} steps, guidance {guidance}")
    async with contextlib.AsyncExitStack() as stack:
        services = [await stack.enter_async_context(service(args)) for _ in range(args.processes)]
        unbatched = await stack.enter_async_context(service(args, GENERATOR_MAX_BATCH="1"))
        channels = [await stack.enter_async_context(internal_channel(f"127.0.0.1:{item.port}"))
                    for item in [*services, unbatched]]
        stubs = [generator_pb2_grpc.GeneratorServiceStub(channel) for channel in channels]
        stub_b, stub_u = stubs[0], stubs[-1]
        batched = services[0]
        overhead = await measure_overhead(args, stubs[:-1], stub_u, pipes, guidance)
        del pipes
        await burst(stub_b, args, 0)
        await burst(stub_u, args, 0)
        with_batching: list[float] = []
        without: list[float] = []
        for round_no in range(1, args.rounds + 1):
            with_batching.append(await burst(stub_b, args, round_no))
            without.append(await burst(stub_u, args, round_no))
        batched_ips = statistics.median(with_batching)
        unbatched_ips = statistics.median(without)
        speedup = batched_ips / unbatched_ips
        sizes = [int(m[1]) for line in batched.log if (m := re.search(r"generate\.started .* requests=(\d+)", line))]
        print(f"batching: {args.concurrency} concurrent requests, {batched_ips:.2f} images/s batched vs "
              f"{unbatched_ips:.2f} unbatched (median of {args.rounds} rounds) → {speedup:.2f}x "
              f"(target ≥ {BATCHING_TARGET}x); batch sizes seen: {sorted(set(sizes))}")
        rss_mb = max(item.peak_rss_mb() for item in [*services, unbatched])
        print(f"peak RSS of the service: {rss_mb:.0f} MB (target ≤ {RSS_TARGET_MB} MB)")
    return {
        "benchmark": "generator", "device": args.device, "model": model_name,
        "settings": {"width": args.width, "height": args.height, "steps": args.steps, "guidance": guidance},
        "cpu_count": len(os.sched_getaffinity(0)),
        # Other work on the machine moves these figures: the 1-minute load average when they were taken.
        "load_average_1m": round(os.getloadavg()[0], 2),
        "overhead": overhead,
        "batching": {"concurrency": args.concurrency, "rounds": args.rounds,
                     "images_per_s_batched": round(batched_ips, 3),
                     "images_per_s_unbatched": round(unbatched_ips, 3), "speedup": round(speedup, 3),
                     "target_min": BATCHING_TARGET, "met": speedup >= BATCHING_TARGET},
        "peak_rss_mb": {"value": round(rss_mb, 1), "target_max": RSS_TARGET_MB, "met": rss_mb <= RSS_TARGET_MB},
    }


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description="facegen generator benchmark")
    parser.add_argument("--device", default="cpu", help="cpu (default), cuda or cuda:N")
    parser.add_argument("--catalog", help="catalog file (default: services/generator/catalog.toml)")
    parser.add_argument("--models-dir", help="GENERATOR_MODELS_DIR for relative catalog paths")
    parser.add_argument("--model", default="", help="catalog model (default: the catalog's default)")
    parser.add_argument("--width", type=int, default=0, help="default: the model's")
    parser.add_argument("--height", type=int, default=0, help="default: the model's")
    parser.add_argument("--steps", type=int, default=0, help="default: the model's")
    parser.add_argument("--runs", type=int, default=30, help="overhead runs (median), at least 20")
    parser.add_argument("--processes", type=int, default=3,
                        help="service processes (and copies loaded here) the overhead runs rotate over")
    parser.add_argument("--concurrency", type=int, default=8)
    parser.add_argument("--rounds", type=int, default=3, help="batching rounds per mode (median)")
    args = parser.parse_args(argv)
    if args.runs < 20:
        parser.error("--runs must be at least 20")
    if not 1 <= args.processes <= args.runs:
        parser.error("--processes must be between 1 and --runs")
    # The services run from the repo root: make relative paths absolute first.
    args.catalog = str(Path(args.catalog).resolve()) if args.catalog else None
    args.models_dir = str(Path(args.models_dir).resolve()) if args.models_dir else None
    return args


if __name__ == "__main__":
    figures = asyncio.run(main(parse_args()))
    print(json.dumps(figures, sort_keys=True))
