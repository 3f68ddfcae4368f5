"""`facegen`: run, submit, watch, get, cancel, models, health, doctor.

Exit codes tell outcomes apart for scripts:
0 every image has the face swapped · 3 completed, but at least one image fell
back to the plain image · 4 the job failed · 5 the job was cancelled ·
2 the request was rejected (bad input) · 1 the gateway could not be reached
or another error.

A thin shell over the client library (``services.client``): ``run`` and
``watch`` re-attach by themselves when a gateway goes away mid-job.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
import tempfile
from collections.abc import Iterable, Sequence
from pathlib import Path

import grpc
import requests
from google.protobuf import json_format
from grpc_health.v1 import health_pb2, health_pb2_grpc

from facegen.v1 import common_pb2, gateway_pb2
from services.cli.progress import ProgressView, describe_result, event_json
from services.client import FacegenClient, GatewayError, JobStream, RetryPolicy, job_request, tls_credentials
from services.common.images import EXTENSION_BY_MIME

EXIT_OK, EXIT_ERROR, EXIT_REJECTED, EXIT_FALLBACK, EXIT_FAILED, EXIT_CANCELLED = 0, 1, 2, 3, 4, 5
DOWNLOAD_LIMIT_BYTES = 64 * 1024 * 1024


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="facegen", description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--gateway", default=os.environ.get("FACEGEN_GATEWAY", "127.0.0.1:50051"),
                        help="gateway address (env FACEGEN_GATEWAY)")
    parser.add_argument("--token", default=os.environ.get("FACEGEN_TOKEN"),
                        help="bearer token, when the gateway requires one (env FACEGEN_TOKEN)")
    tls = parser.add_argument_group("TLS", "any of these turns TLS on")
    tls.add_argument("--tls", action="store_true", default=_env_flag("FACEGEN_TLS"),
                     help="TLS with the system's root certificates (env FACEGEN_TLS=1)")
    tls.add_argument("--tls-ca", type=Path, default=_env_path("FACEGEN_TLS_CA"), metavar="FILE",
                     help="CA that signs the gateway's certificate, PEM (env FACEGEN_TLS_CA)")
    tls.add_argument("--tls-cert", type=Path, default=_env_path("FACEGEN_TLS_CERT"), metavar="FILE",
                     help="client certificate, PEM, for a gateway that requires one (env FACEGEN_TLS_CERT)")
    tls.add_argument("--tls-key", type=Path, default=_env_path("FACEGEN_TLS_KEY"), metavar="FILE",
                     help="its private key, PEM (env FACEGEN_TLS_KEY)")
    tls.add_argument("--tls-server-name", default=os.environ.get("FACEGEN_TLS_SERVER_NAME"), metavar="NAME",
                     help="the name the gateway's certificate must carry, when it is not the address's host "
                          "(e.g. through kubectl port-forward; env FACEGEN_TLS_SERVER_NAME)")
    parser.add_argument("--json", action="store_true", help="print events as JSON lines on stdout")
    parser.add_argument("--retry-for", type=float, default=RetryPolicy.give_up_after, metavar="SECONDS",
                        help="how long to keep re-trying (re-attaching to a job) while the gateway is "
                             "unreachable (default %(default)g)")
    commands = parser.add_subparsers(dest="command", required=True)

    for name, text in (("run", "submit a job and follow it to the end"),
                       ("submit", "submit a job and print its id")):
        job = commands.add_parser(name, help=text)
        _job_arguments(job)
        if name == "run":
            _output_arguments(job)
    watch = commands.add_parser("watch", help="follow a job (replays what was missed)")
    watch.add_argument("job_id")
    watch.add_argument("--after", type=int, default=0, help="replay events after this sequence number")
    _output_arguments(watch)
    for name, text in (("get", "show a job's state and result"), ("cancel", "cancel a job")):
        commands.add_parser(name, help=text).add_argument("job_id")
    commands.add_parser("models", help="list the generator's models")
    commands.add_parser("health", help="check that the gateway is serving")
    doctor = commands.add_parser("doctor", help="check storage and the RunPod endpoint with a real swap")
    doctor.add_argument("--reference", type=Path, help="face photo for the test swap (default: the local "
                        "stack's sample, when the `local` extra is installed)")
    doctor.add_argument("--target", type=Path, help="photo to swap the face onto (default: the stack's sample)")
    return parser


def _env_flag(name: str) -> bool:
    return os.environ.get(name, "").strip().lower() in ("1", "true", "yes")


def _env_path(name: str) -> Path | None:
    value = os.environ.get(name, "").strip()
    return Path(value) if value else None


def client_tls(args: argparse.Namespace) -> tuple[bool | grpc.ChannelCredentials, list[tuple[str, str]]]:
    """The client's ``tls`` and channel options from the TLS arguments (ValueError for an unusable file)."""
    options = [("grpc.ssl_target_name_override", args.tls_server_name)] if args.tls_server_name else []
    if args.tls_ca or args.tls_cert or args.tls_key:
        return tls_credentials(args.tls_ca, args.tls_cert, args.tls_key,
                               names=("--tls-cert", "--tls-key", "--tls-ca")), options
    return bool(args.tls or options), options


def _job_arguments(job: argparse.ArgumentParser) -> None:
    job.add_argument("--prompt", default="", help="what to generate (1–2,000 characters)")
    job.add_argument("--negative-prompt", default="")
    job.add_argument("--model", default="")
    job.add_argument("--width", type=int, default=0)
    job.add_argument("--height", type=int, default=0)
    job.add_argument("--steps", type=int, default=0)
    job.add_argument("--guidance", type=float)
    job.add_argument("--seed", type=int, help="-1 or omitted: random")
    job.add_argument("--images", type=int, default=1, help="1–4")
    job.add_argument("--lora", help="NAME or NAME:WEIGHT (default: the catalog's weight)")
    reference = job.add_mutually_exclusive_group(required=True)
    reference.add_argument("--reference", type=Path, help="photo of the face (JPEG, PNG or WebP)")
    reference.add_argument("--reference-key", help="storage key of a reference from an earlier job")
    job.add_argument("--target", type=Path, help="template mode: put the face onto this photo")
    job.add_argument("--mouth-mask", action="store_true", help="keep the target's own mouth")
    job.add_argument("--enhance", action="store_true", help="run the face enhancer")
    job.add_argument("--many-faces", action="store_true", help="swap every face in the target")
    job.add_argument("--idempotency-key", default="")
    job.add_argument("--preview-every", type=int, default=0)


def _output_arguments(command: argparse.ArgumentParser) -> None:
    command.add_argument("--out", type=Path, default=Path("out"), help="where to write the images")
    command.add_argument("--no-download", action="store_true", help="print URLs only")


def build_request(args: argparse.Namespace) -> gateway_pb2.JobRequest:
    """The JobRequest the command-line arguments describe."""
    lora, _, weight = (args.lora or "").partition(":")
    return job_request(
        args.prompt, reference=args.reference, reference_key=args.reference_key, target=args.target,
        negative_prompt=args.negative_prompt, model=args.model, width=args.width, height=args.height,
        steps=args.steps, guidance_scale=args.guidance, seed=args.seed, num_images=args.images, lora=lora or None,
        lora_weight=float(weight) if weight else None, mouth_mask=args.mouth_mask, use_face_enhancer=args.enhance,
        many_faces=args.many_faces, idempotency_key=args.idempotency_key, preview_every=args.preview_every)


def follow(events: Iterable[gateway_pb2.JobEvent], as_json: bool) -> gateway_pb2.JobEvent | None:
    """Shows every event; returns the terminal one (None if the stream ended without it)."""
    view = None if as_json else ProgressView()
    terminal = None
    try:
        for event in events:
            if as_json:
                print(event_json(event), flush=True)
            elif view is not None:
                view.show(event)
            if event.stage == gateway_pb2.STAGE_TERMINAL:
                terminal = event
    finally:
        if view is not None:
            view.close()
    return terminal


def download(result: gateway_pb2.JobResult, job_id: str, out_dir: Path) -> list[Path]:
    """Fetches every result image into ``out_dir``; returns the written paths."""
    out_dir.mkdir(parents=True, exist_ok=True)
    written = []
    for image in result.images:
        with requests.get(image.url, timeout=30, stream=True) as response:
            response.raise_for_status()
            data = response.raw.read(DOWNLOAD_LIMIT_BYTES + 1, decode_content=True)
        if len(data) > DOWNLOAD_LIMIT_BYTES:
            raise ValueError(f"image {image.index} is larger than {DOWNLOAD_LIMIT_BYTES} bytes")
        extension = EXTENSION_BY_MIME.get(image.content_type, "bin")
        path = out_dir / f"{job_id}-{image.index}.{extension}"
        path.write_bytes(data)
        written.append(path)
    return written


def outcome_code(result: gateway_pb2.JobResult) -> int:
    """The exit code a terminal result stands for."""
    if result.state == gateway_pb2.JOB_STATE_CANCELLED:
        return EXIT_CANCELLED
    if result.state != gateway_pb2.JOB_STATE_COMPLETED:
        return EXIT_FAILED
    swapped = (common_pb2.FACE_SWAP_METHOD_EXTERNAL_API, common_pb2.FACE_SWAP_METHOD_LOCAL)
    if result.failures or any(image.face_swap_method not in swapped for image in result.images):
        return EXIT_FALLBACK
    return EXIT_OK


def finish(terminal: gateway_pb2.JobEvent | None, args: argparse.Namespace) -> int:
    """Prints the result, downloads the images, returns the exit code."""
    if terminal is None:
        print("the event stream ended before the job did", file=sys.stderr)
        return EXIT_ERROR
    result = terminal.result
    if not args.json:
        state = gateway_pb2.JobState.Name(result.state).removeprefix("JOB_STATE_")
        print(f"job {terminal.job_id}: {state}" + (f" ({result.code}: {result.message})" if result.message else ""))
        if result.trace_id:
            print(f"trace {result.trace_id}")
        for line in describe_result(result):
            print(line)
    if result.images and not args.no_download:
        for path in download(result, terminal.job_id, args.out):
            if not args.json:
                print(f"wrote {path}")
    return outcome_code(result)


def _stream(stream: JobStream, args: argparse.Namespace) -> int:
    """Shows a run or watch stream to its end. Ctrl-C leaves it (which cancels the job of a run)."""
    try:
        with stream:
            terminal = follow(stream, args.json)
    except KeyboardInterrupt:
        print("\ncancelled", file=sys.stderr)
        return EXIT_CANCELLED
    return finish(terminal, args)


def run_command(args: argparse.Namespace) -> int:
    """Dispatches one parsed command; returns the exit code."""
    if args.command == "doctor":
        return _doctor(args.reference, args.target)
    tls, options = client_tls(args)
    with FacegenClient(args.gateway, token=args.token, tls=tls, options=options,
                       policy=RetryPolicy(give_up_after=args.retry_for)) as client:
        return _dispatch(client, args)


def _doctor(reference: Path | None, target: Path | None) -> int:
    """The swapper's doctor, with the given photos or the local stack's samples (else it skips the swap)."""
    from services.swapper.doctor import main as doctor_main

    with tempfile.TemporaryDirectory(prefix="facegen-doctor-") as directory:
        if reference is None and target is None:
            try:
                from services.stack.samples import write_samples
            except ImportError:  # no `local` extra: the doctor says it skips the swap
                return int(doctor_main())
            reference, target = write_samples(Path(directory))
        if reference is None or target is None:
            print("facegen doctor: give both --reference and --target, or neither", file=sys.stderr)
            return EXIT_REJECTED
        return int(doctor_main(["--reference", str(reference), "--target", str(target)]))


def _dispatch(client: FacegenClient, args: argparse.Namespace) -> int:
    if args.command == "run":
        return _stream(client.run(build_request(args)), args)
    if args.command == "submit":
        print(client.submit(build_request(args)).job_id)
        return EXIT_OK
    if args.command == "watch":
        return _stream(client.watch(args.job_id, args.after), args)
    if args.command == "get":
        job = client.get(args.job_id)
        print(json_format.MessageToJson(job, preserving_proto_field_name=True))
        return outcome_code(job.result) if job.HasField("result") else EXIT_OK
    if args.command == "cancel":
        print(gateway_pb2.JobState.Name(client.cancel(args.job_id)))
        return EXIT_OK
    if args.command == "models":
        for model in client.list_models():
            flags = " (default)" if model.is_default else ""
            print(f"{model.name}{flags}: {model.family}, {model.default_width}x{model.default_height}, "
                  f"sizes {model.min_size}–{model.max_size}, steps ≤ {model.max_steps}, "
                  f"loaded={model.loaded}, loras={list(model.loras)}")
        return EXIT_OK
    health = health_pb2_grpc.HealthStub(client.channel)
    reply = health.Check(health_pb2.HealthCheckRequest(), timeout=10)
    status = health_pb2.HealthCheckResponse.ServingStatus.Name(reply.status)
    print(f"gateway {args.gateway}: {status}")
    return EXIT_OK if reply.status == health_pb2.HealthCheckResponse.SERVING else EXIT_ERROR


def _show_retries() -> None:
    """Prints the client's retry and re-attach lines on stderr (stdout may carry JSON events)."""
    client_log = logging.getLogger("services.client")
    if not any(getattr(handler, "facegen_cli", False) for handler in client_log.handlers):
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(logging.Formatter("facegen: %(message)s"))
        handler.facegen_cli = True  # type: ignore[attr-defined]
        client_log.addHandler(handler)
    client_log.setLevel(logging.INFO)


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the `facegen` command."""
    args = _parser().parse_args(argv)
    _show_retries()
    try:
        return run_command(args)
    except GatewayError as error:
        print(f"facegen: {error}", file=sys.stderr)
        if args.command == "watch" and error.job_id and error.last_seq:
            print(f"facegen: follow it again with: facegen watch {error.job_id} --after {error.last_seq}",
                  file=sys.stderr)
        return EXIT_REJECTED if error.code == grpc.StatusCode.INVALID_ARGUMENT else EXIT_ERROR
    except grpc.RpcError as error:  # the health check
        print(f"facegen: {GatewayError.from_rpc(error)}", file=sys.stderr)
        return EXIT_ERROR
    except (OSError, ValueError, requests.RequestException) as error:
        print(f"facegen: {error}", file=sys.stderr)
        return EXIT_ERROR
