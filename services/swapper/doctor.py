"""``python -m services.swapper doctor --reference FACE --target PHOTO``: checks the configuration
against the real systems.

It prints the masked API key and the endpoints, calls ``/health`` on each
endpoint, checks the bucket (write, presigned read, delete) and runs one
real swap of the two photos through the same code the service uses. The
photos come from whoever runs it (``facegen doctor`` and the local stack
pass two public-domain samples, ``services.stack.samples``): the swapper
image ships none. Without them the swap check is skipped, and says so.
The exit code is 0 only when every check that ran passed.
"""

from __future__ import annotations

import argparse
import io
import secrets
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import aiohttp
from PIL import Image

from facegen.v1 import common_pb2, swapper_pb2
from services.common.images import inspect_image
from services.common.secrets import mask
from services.swapper.app import SwapperApp
from services.swapper.keys import TEMP_PREFIX
from services.swapper.runpod import RunPodError
from services.swapper.s3 import StorageUnavailable
from services.swapper.settings import Settings

Print = Callable[[str], None]


@dataclass
class Report:
    """The outcome of each check."""

    out: Print
    results: list[tuple[str, bool]] = field(default_factory=list)

    def record(self, name: str, ok: bool, detail: str) -> bool:
        """Prints ``PASS|FAIL name: detail`` and remembers the outcome."""
        self.results.append((name, ok))
        self.out(f"{'PASS' if ok else 'FAIL'} {name}: {detail}")
        return ok

    @property
    def passed(self) -> bool:
        """True when there was at least one check and all passed."""
        return bool(self.results) and all(ok for _, ok in self.results)


def _photo(path: str) -> bytes:
    try:
        return Path(path).read_bytes()
    except OSError as exc:
        raise argparse.ArgumentTypeError(f"{path}: {exc.strerror}") from None


async def doctor_command(settings: Settings, args: list[str]) -> int:
    """``doctor [--reference FACE --target PHOTO]`` as a ``services.common.app.Command``."""
    parser = argparse.ArgumentParser(prog="python -m services.swapper doctor",
                                     description="check storage and the RunPod endpoint with a real swap")
    parser.add_argument("--reference", type=_photo, help="a photo of the face to swap in")
    parser.add_argument("--target", type=_photo, help="a photo with a face to swap it onto")
    parsed = parser.parse_args(args)
    if (parsed.reference is None) != (parsed.target is None):
        parser.error("--reference and --target go together")
    photos = (parsed.reference, parsed.target) if parsed.reference is not None else None
    return await run_doctor(settings, photos)


def main(argv: Sequence[str] = ()) -> int:
    """``python -m services.swapper doctor [argv]``: the settings from the environment; returns the exit code."""
    from services.common.app import run_service
    from services.swapper.commands import COMMANDS

    return run_service(SwapperApp, Settings, "swapper", COMMANDS, ["doctor", *argv])


async def run_doctor(settings: Settings, photos: tuple[bytes, bytes] | None, out: Print = print) -> int:
    """Runs every check (the swap with ``photos``: reference face, target photo); returns the exit code."""
    runpod = settings.runpod
    out("facegen swapper doctor")
    out(f"  RunPod API key  {mask(runpod.api_key)}")
    out(f"  RunPod API base {runpod.api_base}")
    out(f"  endpoints       {', '.join(runpod.endpoints) or '(none)'}")
    out(f"  storage         {settings.storage.endpoint} bucket {settings.storage.bucket}")
    report = Report(out)
    app = SwapperApp(settings)
    try:
        if not runpod.endpoints:
            report.record("config", False, "FACE_SWAP_ENDPOINT is not set")
        await _check_health(app, report)
        storage_ok = await _check_storage(app, report)
        if runpod.endpoints and photos is None:
            out("SKIP swap: no photos given (--reference FACE --target PHOTO)")
        elif storage_ok and runpod.endpoints:
            assert photos is not None
            await _check_swap(app, report, *photos)
        elif runpod.endpoints:
            report.record("swap", False, "skipped: storage is not usable")
    finally:
        await app.close()
    passed = report.passed
    total = len(report.results)
    failed = sum(1 for _, ok in report.results if not ok)
    out(f"doctor: all {total} checks passed" if passed else f"doctor: {failed} of {total} checks failed")
    return 0 if passed else 1


async def _check_health(app: SwapperApp, report: Report) -> None:
    client = app.client
    if client is None:
        return
    for endpoint in app.settings.runpod.endpoints:
        try:
            health = await client.health(endpoint, app.settings.runpod.http_timeout_s)
        except RunPodError as exc:
            report.record(f"health {endpoint}", False, str(exc))
            continue
        workers = health.get("workers", {})
        jobs = health.get("jobs", {})
        summary = ", ".join(f"{name}={value}" for name, value in sorted(workers.items())) or "none reported"
        queued = jobs.get("inQueue", "?") if isinstance(jobs, dict) else "?"
        report.record(f"health {endpoint}", True, f"workers {summary}; jobs in queue {queued}")


async def _check_storage(app: SwapperApp, report: Report) -> bool:
    try:
        await app.prepare_once()
    except StorageUnavailable as exc:
        return report.record("storage", False, str(exc))
    storage = app.storage
    assert storage is not None
    started = time.monotonic()
    key = f"{TEMP_PREFIX}doctor/{secrets.token_hex(6)}.png"
    probe = io.BytesIO()
    Image.new("RGB", (8, 8), (200, 30, 30)).save(probe, "PNG")
    data = probe.getvalue()
    try:
        await storage.put(key, data, "image/png")
        status, content_type, body = await _fetch(storage.presign(key, 60), 10)
        if status != 200 or body != data:
            return report.record("storage", False, f"presigned read of {key} answered HTTP "
                                 f"{status} with {len(body)} bytes")
        if content_type != "image/png":
            return report.record("storage", False, f"the store returned Content-Type {content_type!r} for a PNG")
        failed = await app.storage_pool.run(storage.delete_many, [key])
        if failed or await storage.head(key) is not None:
            return report.record("storage", False, f"{key} could not be deleted")
    except StorageUnavailable as exc:
        return report.record("storage", False, str(exc))
    except (aiohttp.ClientError, TimeoutError) as exc:
        return report.record("storage", False, f"presigned read failed: {type(exc).__name__}")
    elapsed = int((time.monotonic() - started) * 1000)
    return report.record("storage", True, f"bucket {storage.bucket}: write, presigned read, delete ok "
                         f"({elapsed} ms)")


async def _check_swap(app: SwapperApp, report: Report, reference: bytes, target: bytes) -> None:
    core = app.core
    started = time.monotonic()
    job_id = f"doctor-{secrets.token_hex(4)}"
    events: list[swapper_pb2.SwapEvent] = []

    async def collect(event: swapper_pb2.SwapEvent) -> None:
        events.append(event)
        kind = event.WhichOneof("event")
        if kind == "submitted":
            report.out(f"  submitted {event.submitted.remote_job_id} to {event.submitted.endpoint}")
        elif kind == "remote_status":
            status = event.remote_status
            report.out(f"  remote {status.status} (delay {status.delay_time_ms} ms, "
                       f"execution {status.execution_time_ms} ms)")

    try:
        key, _ = await core.put_reference(job_id, reference)
        await core.swap(swapper_pb2.SwapRequest(job_id=job_id, image_index=0, target_image=target,
                                                reference_key=key), collect)
    except Exception as exc:  # the doctor reports every failure instead of crashing
        report.record("swap", False, f"{type(exc).__name__}: {exc}")
        return
    results = [event.result for event in events if event.WhichOneof("event") == "result"]
    if len(results) != 1:
        report.record("swap", False, f"expected one result event, got {len(results)}")
        return
    result = results[0]
    if result.method != common_pb2.FACE_SWAP_METHOD_EXTERNAL_API:
        reason = common_pb2.FallbackReason.Name(result.fallback_reason)
        report.record("swap", False, f"fell back ({reason}): {result.fallback_message}")
        return
    try:
        _, _, fetched = await _fetch(result.url, 30)
        info = inspect_image(fetched, "the stored result")
    except Exception as exc:  # any failure to read the result back fails the check
        report.record("swap", False, f"the stored result cannot be read back: {exc}")
        return
    elapsed = time.monotonic() - started
    report.record("swap", True, f"external_api {info.width}x{info.height} {info.mime} in {elapsed:.1f} s "
                  f"({result.key})")


async def _fetch(url: str, timeout_s: float) -> tuple[int, str, bytes]:
    """GETs ``url`` as a client of the store would: (status, Content-Type, body)."""
    async with aiohttp.ClientSession() as session, \
            session.get(url, timeout=aiohttp.ClientTimeout(total=timeout_s)) as response:
        return response.status, response.headers.get("Content-Type", ""), await response.read()
