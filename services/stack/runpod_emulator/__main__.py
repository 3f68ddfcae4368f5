"""``python -m services.stack.runpod_emulator``: RunPod's queue API for one endpoint, in a process of its own.

    .venv-worker/bin/python -m services.stack.runpod_emulator --host 127.0.0.1 --port PORT \\
        --endpoint-id ENDPOINT_ID --workers N        # the real handler in N worker processes
    python -m services.stack.runpod_emulator --scripted-ms 1000 ...   # scripted 1 s jobs, any venv

The API key comes from FACESWAP_ENDPOINT_API_KEY (else RUNPOD_API_KEY) or --api-key; every
flag has a FACESWAP_ENDPOINT_<NAME> fallback. See docs/runpod_emulator.md.
"""

from __future__ import annotations

import argparse
import ipaddress
import logging
import os
import signal
import sys
import threading
import time
from collections.abc import Sequence
from types import FrameType

from services.stack.runpod_emulator import log
from services.stack.runpod_emulator.emulator import RunPodEmulator
from services.stack.runpod_emulator.endpoint import Limits, Runner
from services.stack.runpod_emulator.faults import ROUTES, Faults, parse_faults
from services.stack.runpod_emulator.jobs import JobPlan
from services.stack.runpod_emulator.scripted import ScriptedRunner
from services.stack.runpod_emulator.workers import WorkerPool

LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR")
LOG_FORMATS = ("text", "json")


def _env(name: str, default: str) -> str:
    return os.environ.get(f"FACESWAP_ENDPOINT_{name}", default)


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    """Command-line flags, each defaulting to its FACESWAP_ENDPOINT_<NAME> variable."""
    p = argparse.ArgumentParser(prog="python -m services.stack.runpod_emulator", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--host", default=_env("HOST", "127.0.0.1"),
                   help="address to bind: loopback by default; 0.0.0.0 only inside a container")
    p.add_argument("--port", type=int, default=int(_env("PORT", "8000")), help="0 picks a free port")
    p.add_argument("--endpoint-id", default=_env("ID", "local-faceswap"))
    p.add_argument("--api-key", default=_env("API_KEY", os.environ.get("RUNPOD_API_KEY", "")),
                   help="Bearer key clients must send (FACESWAP_ENDPOINT_API_KEY, else RUNPOD_API_KEY)")
    p.add_argument("--workers", type=int, default=int(_env("WORKERS", "2")), help="worker processes")
    p.add_argument("--spares", type=int, default=int(_env("SPARES", "1")),
                   help="warm worker processes kept in reserve to replace one ended by a cancel or timeout")
    p.add_argument("--scripted-ms", type=int, default=int(_env("SCRIPTED_MS", "0")),
                   help="no worker processes: every job runs this long and returns the target with inverted colours")
    p.add_argument("--max-queue", type=int, default=int(_env("MAX_QUEUE", "1000")), help="429 beyond this")
    p.add_argument("--execution-timeout-ms", type=int, default=int(_env("EXECUTION_TIMEOUT_MS", "600000")))
    p.add_argument("--ttl-ms", type=int, default=int(_env("TTL_MS", "86400000")))
    p.add_argument("--min-execution-timeout-ms", type=int, default=int(_env("MIN_EXECUTION_TIMEOUT_MS", "5000")),
                   help="a smaller policy.executionTimeout is raised to this (RunPod's minimum)")
    p.add_argument("--min-ttl-ms", type=int, default=int(_env("MIN_TTL_MS", "10000")),
                   help="a smaller policy.ttl is raised to this (RunPod's minimum)")
    p.add_argument("--retention-s", type=float, default=float(_env("RETENTION_S", "1800")),
                   help="how long /run results stay readable")
    p.add_argument("--runsync-retention-s", type=float, default=float(_env("RUNSYNC_RETENTION_S", "60")))
    p.add_argument("--allow-private-urls", action=argparse.BooleanOptionalAction,
                   default=_env("ALLOW_PRIVATE_URLS", "true").lower() in ("1", "true", "yes"),
                   help="let workers fetch inputs from loopback/private hosts (e.g. a local S3 server)")
    faults = p.add_argument_group("fault injection (also POST /admin/faults)")
    for name in ("latency-ms", "error-burst", "malformed-burst"):
        faults.add_argument(f"--{name}", type=int, default=0)
    for name in ("failure-rate", "hang-rate", "crash-rate", "unchanged-rate"):
        faults.add_argument(f"--{name}", type=float, default=0.0)
    faults.add_argument("--error-status", type=int, default=503)
    faults.add_argument("--fault-routes", default="", help=f"comma list from {','.join(ROUTES)}")
    faults.add_argument("--fault-seed", type=int, default=None)
    p.add_argument("--log-level", type=str.upper, choices=LOG_LEVELS,
                   default=_env("LOG_LEVEL", os.environ.get("LOG_LEVEL", "INFO")).upper(),
                   help="FACESWAP_ENDPOINT_LOG_LEVEL, else LOG_LEVEL, as every service")
    p.add_argument("--log-format", type=str.lower, choices=LOG_FORMATS,
                   default=_env("LOG_FORMAT", os.environ.get("LOG_FORMAT", "text")).lower(),
                   help="FACESWAP_ENDPOINT_LOG_FORMAT, else LOG_FORMAT: one JSON object per line with json")
    args = p.parse_args(argv)
    if not args.api_key:
        p.error("an API key is required (FACESWAP_ENDPOINT_API_KEY, RUNPOD_API_KEY or --api-key)")
    # argparse checks choices on the command line only, not on the defaults taken from the environment.
    for flag, allowed in (("log_level", LOG_LEVELS), ("log_format", LOG_FORMATS)):
        if getattr(args, flag) not in allowed:
            p.error(f"--{flag.replace('_', '-')} (or its variable) must be one of {', '.join(allowed)}, "
                    f"not {getattr(args, flag)!r}")
    if args.workers < 1 or args.spares < 0 or args.scripted_ms < 0:
        p.error("--workers must be at least 1, --spares and --scripted-ms at least 0")
    return args


def is_loopback(host: str) -> bool:
    """Whether a bind address only accepts connections from this machine."""
    try:
        return host == "localhost" or ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def initial_faults(args: argparse.Namespace) -> Faults:
    """The fault settings given by flags (ValueError when one is out of range)."""
    return parse_faults(
        {"latency_ms": args.latency_ms, "failure_rate": args.failure_rate, "hang_rate": args.hang_rate,
         "crash_rate": args.crash_rate, "unchanged_rate": args.unchanged_rate, "error_burst": args.error_burst,
         "error_status": args.error_status, "malformed_burst": args.malformed_burst,
         "routes": [r for r in args.fault_routes.split(",") if r], "seed": args.fault_seed},
        Faults(),
    )


def main(argv: Sequence[str] | None = None) -> int:
    """Serve until SIGTERM or SIGINT; then stop the worker processes and exit 0."""
    args = parse_args(argv)
    log.configure(args.log_level, args.log_format)
    try:
        faults = initial_faults(args)
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    runner: Runner
    if args.scripted_ms:
        runner = ScriptedRunner()
    else:
        worker_env = {"FACESWAP_ALLOW_PRIVATE_URLS": "true" if args.allow_private_urls else "false",
                      "GLOG_minloglevel": "2", "TF_CPP_MIN_LOG_LEVEL": "2"}
        runner = WorkerPool(args.workers, worker_env, spares=args.spares)
    emulator = RunPodEmulator(args.api_key, args.host, args.port, record_requests=False)
    endpoint = emulator.endpoint(args.endpoint_id, runner, Limits(
        max_queue=args.max_queue, execution_timeout_s=args.execution_timeout_ms / 1000.0,
        ttl_s=args.ttl_ms / 1000.0, retention_s=args.retention_s, runsync_retention_s=args.runsync_retention_s,
        min_execution_timeout_s=args.min_execution_timeout_ms / 1000.0, min_ttl_s=args.min_ttl_ms / 1000.0))
    endpoint.faults.set(faults)
    endpoint.plan = JobPlan(run_s=args.scripted_ms / 1000.0)

    stop = threading.Event()

    def on_signal(signum: int, frame: FrameType | None) -> None:
        stop.set()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    started = time.monotonic()
    emulator.start()
    if not is_loopback(args.host):
        log.event("endpoint.exposed", logging.WARNING, host=args.host,
                  note="listening beyond loopback; meant for a container network only")
    log.event("endpoint.listening", url=f"{emulator.base_url}/{args.endpoint_id}", port=emulator.port,
              workers=None if args.scripted_ms else args.workers, scripted_ms=args.scripted_ms or None,
              api_key=log.mask(args.api_key))
    announced = False
    while not stop.wait(0.05) and emulator.running:
        if not announced and runner.ready():
            announced = True
            log.event("endpoint.ready", port=emulator.port, startup_ms=round((time.monotonic() - started) * 1000))
    failed = not emulator.running
    log.event("endpoint.stopping")
    emulator.stop()
    log.event("endpoint.stopped")
    return 1 if failed and not stop.is_set() else 0


if __name__ == "__main__":
    sys.exit(main())
