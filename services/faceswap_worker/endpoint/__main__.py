"""``python -m services.faceswap_worker.endpoint``: the local RunPod queue API with N handler workers.

    .venv-worker/bin/python -m services.faceswap_worker.endpoint --host 127.0.0.1 --port PORT \\
        --endpoint-id ENDPOINT_ID --api-key KEY --workers N

Every flag has an environment fallback (FACESWAP_ENDPOINT_*); see docs/faceswap_worker.md.
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

from services.faceswap_worker.endpoint import log
from services.faceswap_worker.endpoint.faults import ROUTES, Faults, FaultState
from services.faceswap_worker.endpoint.jobs import JobStore, StoreLimits
from services.faceswap_worker.endpoint.pool import SimulatedSlot, WorkerSlot
from services.faceswap_worker.endpoint.server import Endpoint, EndpointHTTPServer, ServerConfig


def _env(name: str, default: str) -> str:
    return os.environ.get(f"FACESWAP_ENDPOINT_{name}", default)


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    """Command-line flags, each defaulting to its FACESWAP_ENDPOINT_<NAME> variable."""
    p = argparse.ArgumentParser(prog="python -m services.faceswap_worker.endpoint", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--host", default=_env("HOST", "127.0.0.1"),
                   help="address to bind: loopback by default; 0.0.0.0 only inside a container")
    p.add_argument("--port", type=int, default=int(_env("PORT", "8000")), help="0 picks a free port")
    p.add_argument("--endpoint-id", default=_env("ID", "local-faceswap"))
    p.add_argument("--api-key", default=_env("API_KEY", os.environ.get("RUNPOD_API_KEY", "")),
                   help="Bearer key clients must send (FACESWAP_ENDPOINT_API_KEY, else RUNPOD_API_KEY)")
    p.add_argument("--workers", type=int, default=int(_env("WORKERS", "2")), help="worker processes")
    p.add_argument("--simulate-ms", type=int, default=int(_env("SIMULATE_MS", "0")),
                   help="jobs take this long and echo the target image, without the engine (threads, not processes)")
    p.add_argument("--max-queue", type=int, default=int(_env("MAX_QUEUE", "1000")), help="429 beyond this")
    p.add_argument("--execution-timeout-ms", type=int, default=int(_env("EXECUTION_TIMEOUT_MS", "600000")))
    p.add_argument("--ttl-ms", type=int, default=int(_env("TTL_MS", "86400000")))
    p.add_argument("--retention-s", type=float, default=float(_env("RETENTION_S", "1800")),
                   help="how long /run results stay readable")
    p.add_argument("--runsync-retention-s", type=float, default=float(_env("RUNSYNC_RETENTION_S", "60")))
    p.add_argument("--allow-private-urls", action=argparse.BooleanOptionalAction,
                   default=_env("ALLOW_PRIVATE_URLS", "true").lower() in ("1", "true", "yes"),
                   help="let workers fetch inputs from loopback/private hosts (e.g. a local S3 server)")
    faults = p.add_argument_group("fault injection (also POST /admin/faults)")
    faults.add_argument("--latency-ms", type=int, default=0)
    faults.add_argument("--failure-rate", type=float, default=0.0)
    faults.add_argument("--hang-rate", type=float, default=0.0)
    faults.add_argument("--crash-rate", type=float, default=0.0)
    faults.add_argument("--error-burst", type=int, default=0)
    faults.add_argument("--error-status", type=int, default=503)
    faults.add_argument("--malformed-burst", type=int, default=0)
    faults.add_argument("--fault-routes", default="", help=f"comma list from {','.join(ROUTES)}")
    faults.add_argument("--fault-seed", type=int, default=None)
    p.add_argument("--log-level", default=_env("LOG_LEVEL", "INFO"))
    args = p.parse_args(argv)
    if not args.api_key:
        p.error("an API key is required (--api-key or FACESWAP_ENDPOINT_API_KEY)")
    if args.workers < 1:
        p.error("--workers must be at least 1")
    return args


def is_loopback(host: str) -> bool:
    """Whether a bind address only accepts connections from this machine."""
    try:
        return host == "localhost" or ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _faults(args: argparse.Namespace) -> Faults:
    from services.faceswap_worker.endpoint.faults import parse_faults

    routes = [r for r in args.fault_routes.split(",") if r]
    return parse_faults(
        {"latency_ms": args.latency_ms, "failure_rate": args.failure_rate, "hang_rate": args.hang_rate,
         "crash_rate": args.crash_rate,
         "error_burst": args.error_burst, "error_status": args.error_status,
         "malformed_burst": args.malformed_burst, "routes": routes, "seed": args.fault_seed},
        Faults(),
    )


def main(argv: Sequence[str] | None = None) -> int:
    """Run until SIGTERM or SIGINT; then stop the workers and exit."""
    args = parse_args(argv)
    log.configure(getattr(logging, str(args.log_level).upper(), logging.INFO))
    try:
        faults = FaultState(_faults(args))
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    store = JobStore(StoreLimits(
        max_queue=args.max_queue,
        execution_timeout_s=args.execution_timeout_ms / 1000.0,
        ttl_s=args.ttl_ms / 1000.0,
        retention_s=args.retention_s,
        runsync_retention_s=args.runsync_retention_s,
    ))
    worker_env = {
        "FACESWAP_ALLOW_PRIVATE_URLS": "true" if args.allow_private_urls else "false",
        "GLOG_minloglevel": "2",
        "TF_CPP_MIN_LOG_LEVEL": "2",
    }
    slots: list[WorkerSlot] = [
        SimulatedSlot(i, store, worker_env, args.simulate_ms) if args.simulate_ms > 0
        else WorkerSlot(i, store, worker_env)
        for i in range(args.workers)
    ]
    endpoint = Endpoint(ServerConfig(args.endpoint_id, args.api_key), store, slots, faults)
    httpd = EndpointHTTPServer((args.host, args.port), endpoint)
    host, port = str(httpd.server_address[0]), int(httpd.server_address[1])
    if not is_loopback(args.host):
        log.event("endpoint.exposed", logging.WARNING, host=args.host,
                  note="listening beyond loopback; meant for a container network only")
    stop = threading.Event()

    def on_signal(signum: int, frame: FrameType | None) -> None:
        stop.set()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    threading.Thread(target=httpd.serve_forever, kwargs={"poll_interval": 0.2}, name="http", daemon=True).start()
    log.event("endpoint.listening", url=f"http://{host}:{port}/v2/{args.endpoint_id}", port=port,
              workers=args.workers, simulate_ms=args.simulate_ms or None, api_key=log.mask(args.api_key))
    started = time.monotonic()
    for slot in slots:
        slot.start()

    def sweep() -> None:
        while not stop.wait(0.05):
            store.sweep()
            if not endpoint.started.is_set() and all(s.ready.is_set() for s in slots):
                endpoint.started.set()
                log.event("endpoint.ready", port=port, workers=len(slots),
                          startup_ms=round((time.monotonic() - started) * 1000))

    sweeper = threading.Thread(target=sweep, name="sweeper", daemon=True)
    sweeper.start()
    stop.wait()
    log.event("endpoint.stopping")
    httpd.shutdown()
    store.close()
    for slot in slots:
        slot.stop()
    for slot in slots:
        slot.join(5)
    httpd.server_close()
    log.event("endpoint.stopped")
    return 0


if __name__ == "__main__":
    sys.exit(main())
