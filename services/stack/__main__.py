"""`python -m services.stack demo` runs two real jobs; `python -m services.stack up` keeps the stack running
(`up --tls`: with TLS on every gRPC hop).

Ctrl-C, SIGTERM (docker stop, systemd, CI) and SIGHUP (the terminal closed)
all stop every process the stack started. The services run in their own
sessions, so no signal reaches them except through ``LocalStack.stop``.
"""

from __future__ import annotations

import argparse
import signal
import sys
import threading
import time
from pathlib import Path
from types import FrameType

from services.cli.main import EXIT_FALLBACK, EXIT_OK
from services.cli.main import main as facegen
from services.stack.launcher import REPO_ROOT, LocalStack, StackError, logs_line
from services.stack.samples import write_samples

PROMPT = "portrait photo of a woman in a navy uniform, studio lighting"


def _run_dir() -> Path:
    return REPO_ROOT / "run" / time.strftime("%Y%m%d-%H%M%S")


def demo(out_dir: Path) -> int:
    """Starts the stack, runs a prompt job and a template job, writes their images to ``out_dir``."""
    run_dir = _run_dir()
    reference, template = write_samples(run_dir / "samples")
    logs_line(f"starting the local stack (logs in {run_dir.relative_to(REPO_ROOT)})")
    started = time.monotonic()
    with LocalStack(run_dir) as stack:
        assert stack.addresses is not None
        gateway = stack.addresses.gateway
        logs_line(f"stack ready in {time.monotonic() - started:.1f} s; gateway at {gateway}")

        print("\n== Job 1: prompt + reference face (Grace Hopper) ==", flush=True)
        print("The tiny CPU model draws no face, so the swap is expected to fall back, and to say why.")
        jobs_started = time.monotonic()
        first = facegen(["--gateway", gateway, "run", "--prompt", PROMPT, "--seed", "42",
                         "--reference", str(reference), "--out", str(out_dir)])

        if _stopping.is_set():  # the CLI turned the interrupt into a cancelled job 1
            return 130
        print("\n== Job 2: template photo (astronaut) + reference face (Grace Hopper) ==", flush=True)
        second = facegen(["--gateway", gateway, "run", "--prompt", "template swap", "--reference",
                          str(reference), "--target", str(template), "--out", str(out_dir)])
        elapsed = time.monotonic() - jobs_started
    ok = first in (EXIT_OK, EXIT_FALLBACK) and second == EXIT_OK
    print(f"\nBoth jobs ran in {elapsed:.1f} s; images are in {out_dir}/. "
          + ("Demo OK." if ok else f"Demo FAILED (exit codes {first}, {second})."))
    return 0 if ok else 1


def up(run_dir: Path, gateways: int, shared_store: bool, tls: bool = False, otlp_endpoint: str = "") -> int:
    """Starts the stack and keeps it running until Ctrl-C, SIGTERM or SIGHUP."""
    with LocalStack(run_dir, gateways=gateways, shared_store=shared_store, tls=tls,
                    otlp_endpoint=otlp_endpoint) as stack:
        assert stack.addresses is not None
        a = stack.addresses
        replicas = "".join(f"gateway   {address}\n" for address in a.gateways)
        store = f"redis     {a.redis} (the gateways' job store)\n" if a.redis else ""
        metrics = "".join(f"metrics   {url} ({name})\n" for name, url in a.metrics.items())
        traces = f"traces    sent to {otlp_endpoint}\n" if otlp_endpoint else ""
        certs = stack.certificates
        secured = (f"tls       CA {certs.ca} (every gRPC hop; the generator and swapper take only the gateway's "
                   f"client certificate)\n" if certs else "")
        connect = f" --tls-ca {certs.ca}" if certs else ""
        print(f"{replicas}{store}generator {a.generator}\nswapper   {a.swapper}\n"
              f"s3        {a.s3}\nrunpod    {a.runpod}\n{metrics}{traces}{secured}logs      {run_dir}\n"
              f"try: facegen --gateway {a.gateway}{connect} health\nCtrl-C (or SIGTERM, SIGHUP) stops everything.",
              flush=True)
        try:
            while all(service.running for service in stack.services.values()):
                time.sleep(1)
            logs_line("a service exited; stopping the stack")
            return 1
        except KeyboardInterrupt:
            return 0


STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)
_stopping = threading.Event()


def _stop_like_ctrl_c(signum: int, _frame: FrameType | None) -> None:
    """Raises KeyboardInterrupt once, so that each ``with LocalStack`` stops what it started.

    Later signals are ignored: interrupting the stop would leave processes running,
    and the stop itself is bounded (SIGKILL after each service's grace period).
    """
    if _stopping.is_set():
        return
    _stopping.set()
    logs_line(f"{signal.Signals(signum).name}: stopping the stack")
    raise KeyboardInterrupt


def main() -> int:
    """Entry point."""
    for sig in STOP_SIGNALS:
        signal.signal(sig, _stop_like_ctrl_c)
    parser = argparse.ArgumentParser(prog="python -m services.stack")
    commands = parser.add_subparsers(dest="command", required=True)
    commands.add_parser("demo", help="run two jobs end to end").add_argument(
        "--out", type=Path, default=REPO_ROOT / "out")
    serve = commands.add_parser("up", help="start the stack and keep it running")
    serve.add_argument("--run-dir", type=Path, default=None,
                       help="where the service logs go (default: run/<timestamp>)")
    serve.add_argument("--gateways", type=int, default=1,
                       help="gateway replicas; more than one share a Redis job store (default: 1)")
    serve.add_argument("--redis", action="store_true", help="a Redis job store even for one gateway")
    serve.add_argument("--otlp-endpoint", default="", metavar="URL",
                       help="send every service's spans there (OTLP over gRPC, e.g. http://127.0.0.1:4317)")
    serve.add_argument("--tls", action="store_true",
                       help="TLS on every gRPC hop with a CA made at start (in <run dir>/tls); mTLS to the "
                            "generator and the swapper")
    args = parser.parse_args()
    if args.command == "up" and args.gateways < 1:
        parser.error("--gateways must be at least 1")
    try:
        if args.command == "demo":
            return demo(args.out)
        return up(args.run_dir or _run_dir(), args.gateways, args.redis, args.tls, args.otlp_endpoint)
    except StackError as error:
        logs_line(f"the stack failed to start: {error}")
        return 1
    except KeyboardInterrupt:
        return 130


sys.exit(main())
