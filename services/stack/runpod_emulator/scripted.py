"""Scripted jobs: each follows its endpoint's plan on its own timeline, in the emulator's process.

A job is IN_QUEUE for ``queue_s``, IN_PROGRESS for ``run_s``, then ends with the
planned status and output. By default it downloads its ``source_file`` and
``target_file`` when submitted (so presigned URLs are really fetched) and returns
the target with inverted colours as raw base64 PNG in ``output.result``.
"""

from __future__ import annotations

import asyncio
import base64
import io
import time
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from PIL import Image, ImageOps

from services.stack.runpod_emulator.endpoint import Endpoint
from services.stack.runpod_emulator.jobs import (
    COMPLETED,
    DEFAULT,
    FAILED,
    NO_OUTPUT,
    Job,
)

CRASHED = "worker process exited unexpectedly (code -9)"
INJECTED_FAILURE = "injected failure (fault injection)"


def png_bytes(size: tuple[int, int] = (32, 32), color: tuple[int, int, int] = (40, 160, 90)) -> bytes:
    """A small valid PNG."""
    out = io.BytesIO()
    Image.new("RGB", size, color).save(out, "PNG")
    return out.getvalue()


def fetch_inputs(job_input: Any) -> tuple[bytes, bytes]:
    """Download ``source_file`` and ``target_file`` and check that both are images."""
    fetched = []
    for key in ("source_file", "target_file"):
        with urllib.request.urlopen(job_input[key], timeout=10) as response:
            data = response.read()
        Image.open(io.BytesIO(data)).verify()
        fetched.append(data)
    return fetched[0], fetched[1]


def inverted_png(image: bytes) -> bytes:
    """The image with inverted colours, as PNG."""
    with Image.open(io.BytesIO(image)) as opened:
        inverted = ImageOps.invert(opened.convert("RGB"))
    out = io.BytesIO()
    inverted.save(out, "PNG")
    return out.getvalue()


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


class ScriptedRunner:
    """Runs every job of one endpoint on its plan's timeline; jobs do not wait for each other."""

    worker_id = "emulated-worker"

    def __init__(self) -> None:
        self._endpoint: Endpoint | None = None
        self._tasks: dict[Job, asyncio.Task[None]] = {}
        self._downloads: ThreadPoolExecutor | None = None
        self._default_output = {"result": _b64(png_bytes())}

    def bind(self, endpoint: Endpoint) -> None:
        """Remember the endpoint whose jobs this runner runs."""
        self._endpoint = endpoint

    def queued(self, job: Job) -> None:
        """Plan the job, start its downloads and its timeline."""
        assert self._endpoint is not None
        plan = job.plan = self._endpoint.plan_for(job.input)
        wants_target = job.fate == "unchanged" or (plan.fetch_inputs and plan.output is DEFAULT)
        if wants_target and isinstance(job.input, dict):
            if self._downloads is None:
                self._downloads = ThreadPoolExecutor(16, thread_name_prefix="emulator-download")
            job.inputs = self._downloads.submit(fetch_inputs, job.input)
        self._tasks[job] = asyncio.get_running_loop().create_task(self._run(self._endpoint, job))

    def ended(self, job: Job) -> None:
        """Stop the job's timeline."""
        task = self._tasks.pop(job, None)
        if task is not None:
            task.cancel()

    def ready(self) -> bool:
        """Scripted endpoints serve at once."""
        return True

    def workers(self) -> dict[str, int]:
        """One idle worker, plus one running per job in progress."""
        assert self._endpoint is not None
        running = sum(1 for job in self._endpoint.jobs.values() if job.status == "IN_PROGRESS")
        return {"idle": 1, "initializing": 0, "ready": 1 + running, "running": running, "throttled": 0,
                "unhealthy": 0}

    async def start(self) -> None:
        """Nothing to start."""

    async def stop(self) -> None:
        """Cancel every timeline; abandon downloads in flight."""
        for task in list(self._tasks.values()):
            task.cancel()
        await asyncio.gather(*self._tasks.values(), return_exceptions=True)
        if self._downloads is not None:
            self._downloads.shutdown(wait=False, cancel_futures=True)

    async def _run(self, endpoint: Endpoint, job: Job) -> None:
        try:
            await self._timeline(endpoint, job)
        finally:
            if self._tasks.get(job) is asyncio.current_task():  # not yet replaced by a retry's timeline
                del self._tasks[job]

    async def _timeline(self, endpoint: Endpoint, job: Job) -> None:
        # Times are reported as planned, not as late as the event loop woke up.
        plan = job.plan
        assert plan is not None
        started = job.submitted_at + plan.queue_s
        await asyncio.sleep(plan.queue_s)
        attempt = endpoint.start(job, self.worker_id, at=started)
        if job.fate == "fail":
            endpoint.finish(job, attempt, FAILED, NO_OUTPUT, INJECTED_FAILURE)
            return
        if job.fate == "crash":
            endpoint.finish(job, attempt, FAILED, NO_OUTPUT, CRASHED)
            return
        if job.fate == "hang":  # IN_PROGRESS until cancelled, timed out or purged
            return
        await asyncio.sleep(max(0.0, started + plan.run_s - time.monotonic()))
        status, output, error = await self._outcome(job)
        endpoint.finish(job, attempt, status, output, error, at=started + plan.run_s)

    async def _outcome(self, job: Job) -> tuple[str, Any, Any]:
        plan = job.plan
        assert plan is not None
        if job.fate == "unchanged" or (plan.final == COMPLETED and plan.output is DEFAULT):
            if job.inputs is None:
                return COMPLETED, self._default_output, None
            try:
                _source, target = await asyncio.wrap_future(job.inputs)
            except Exception as exc:
                return FAILED, NO_OUTPUT, f"could not download the inputs: {exc}"
            if job.fate == "unchanged":  # the target as it came, reported as a success
                return COMPLETED, {"result": _b64(target)}, None
            loop = asyncio.get_running_loop()
            return COMPLETED, {"result": _b64(await loop.run_in_executor(self._downloads, inverted_png, target))}, None
        output = plan.output(job) if callable(plan.output) else plan.output
        if output is DEFAULT:
            output = NO_OUTPUT
        if plan.final == FAILED:
            return FAILED, output, plan.error if plan.error is not None else "emulated failure"
        return plan.final, output, plan.error
