"""The device in a child process, so the pipeline never shares a GIL with the gRPC server.

Streaming one gRPC message costs the event loop and gRPC's poller thread a
millisecond or two of Python here; in one process that time is taken from
the pipeline, whose step loop is Python between torch ops (measured: 35-47 ms
per 20-step request on the tiny model). In its own process the pipeline runs
undisturbed.

The parent sends one command at a time over a pipe (load, warm, run, stop)
and a reader thread takes the replies and the step events. Per batch member
there is a cancel flag and a progress counter in shared memory: the parent
sets the flag, the child's step callback reads it, exactly as with a thread.
If the child dies (killed, crashed), the batch it was running fails with
UNAVAILABLE and the next command starts a fresh child, which loads models
again as they are asked for.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import ctypes
import logging
import multiprocessing
import multiprocessing.connection
import threading
from collections.abc import Callable
from typing import Any

from PIL import Image

from facegen.v1 import generator_pb2
from services.common import errors, logs
from services.common.errors import FacegenError, Unavailable
from services.generator.catalog import load_catalog
from services.generator.device import Device, use_torch_threads
from services.generator.device_report import DeviceReport
from services.generator.jobs import Job
from services.generator.params import GenerationParams
from services.generator.pipelines import PipelineRegistry, quiet_libraries
from services.generator.runner import BatchInterrupted, BatchOutput, run_batch, warm_up
from services.generator.settings import Settings

log = logging.getLogger(__name__)

# Members of one batch: at most GENERATOR_MAX_BATCH (≤ 64) images, so at most 64 jobs.
SLOTS = 64
_STOP_WAIT_S = 5.0


class ProcessRunner:
    """Runs loads and pipeline calls in a child process (``GENERATOR_DEVICE_ISOLATION=process``)."""

    def __init__(self, settings: Settings, device: Device,
                 on_report: Callable[[DeviceReport], None] = lambda _report: None) -> None:
        self.settings = settings
        self.device = device
        self._on_report = on_report
        # Children fork from a server process that imported torch and diffusers once (and
        # started no threads), so a child is up in a fraction of a second, not the seconds a
        # fresh interpreter takes to import them.
        self._context = multiprocessing.get_context("forkserver")
        self._context.set_forkserver_preload([__name__, "services.generator.device_preload"])
        self._cancel = self._context.RawArray(ctypes.c_byte, SLOTS)
        self._progress = self._context.RawArray(ctypes.c_int, SLOTS)
        self._lock = asyncio.Lock()
        self._batch: list[Job] = []
        self._reply: concurrent.futures.Future[Any] | None = None
        self._loaded: frozenset[str] = frozenset()
        self._process: Any = None
        self._conn: multiprocessing.connection.Connection | None = None
        # Children started so far; more than one means a child died and was replaced.
        self.starts = 0

    @property
    def pid(self) -> int | None:
        """The child's process id (None before the first command)."""
        return None if self._process is None else int(self._process.pid)

    async def load(self, name: str) -> None:
        """Loads model ``name`` in the child."""
        await self._command(("load", name))

    async def warm_up(self, name: str) -> int:
        """One short generation with model ``name`` in the child; returns its duration in ms."""
        return int(await self._command(("warm", name)))

    async def run(self, jobs: list[Job]) -> BatchOutput:
        """One pipeline call for ``jobs`` in the child; their step events arrive as it runs."""
        reply = await self._command(("run", [job.params for job in jobs]), jobs)
        if reply[0] == "interrupted":
            raise BatchInterrupted(reply[1])
        _, images, duration_ms, steps_run, denoise_ms = reply
        return BatchOutput(images=[[Image.frombytes(mode, size, data) for mode, size, data in per_job]
                                   for per_job in images],
                           duration_ms=duration_ms, steps_run=steps_run, denoise_ms=denoise_ms)

    def cancel(self, job: Job) -> None:
        """Marks ``job`` cancelled; when it is in the running batch, raises its flag for the child."""
        if job in self._batch:
            slot = self._batch.index(job)
            job.progress = self._progress[slot]
            job.cancel()
            self._cancel[slot] = 1
        else:
            job.cancel()

    def loaded_names(self) -> frozenset[str]:
        """The models in the child's memory, as of its last reply."""
        return self._loaded

    async def stop(self) -> None:
        """Asks the child to exit after its current call; kills it if it has not after a few seconds."""
        process, conn = self._process, self._conn
        if process is None or conn is None:
            return
        if process.is_alive():
            with contextlib.suppress(OSError):
                conn.send(("stop",))
            await asyncio.to_thread(process.join, _STOP_WAIT_S)
            if process.is_alive():
                process.kill()
                await asyncio.to_thread(process.join, _STOP_WAIT_S)
        conn.close()

    async def _command(self, message: tuple[Any, ...], batch: list[Job] | None = None) -> Any:
        async with self._lock:
            if self._process is None or not self._process.is_alive():
                await asyncio.to_thread(self._start)
            assert self._conn is not None
            reply: concurrent.futures.Future[Any] = concurrent.futures.Future()
            self._reply = reply
            self._batch = batch or []
            for slot, job in enumerate(self._batch):
                self._cancel[slot] = 1 if job.cancelled.is_set() else 0
                self._progress[slot] = 0
            try:
                try:
                    self._conn.send(message)
                except OSError as exc:  # it died since the check above; the next command restarts it
                    raise Unavailable("the generator's device process is not running; retry") from exc
                return await asyncio.wrap_future(reply)
            finally:
                self._batch, self._reply = [], None

    def _start(self) -> None:
        """Starts a child and its reader thread (on a worker thread: spawning takes a moment)."""
        if self._conn is not None:
            self._conn.close()  # the dead child's end
        parent_end, child_end = self._context.Pipe()
        process = self._context.Process(target=child_main, name="generator-device", daemon=True,
                                        args=(self.settings, self.device.name, child_end, self._cancel,
                                              self._progress))
        process.start()
        child_end.close()
        self._process, self._conn = process, parent_end
        self.starts += 1
        logs.event(log, "generator.device_process_started", pid=process.pid, starts=self.starts)
        threading.Thread(target=self._read, args=(process, parent_end), name="generator-device-reader",
                         daemon=True).start()

    def _read(self, process: Any, conn: multiprocessing.connection.Connection) -> None:
        """Delivers step events and replies until the child's end of the pipe closes."""
        while True:
            try:
                message = conn.recv()
            except (EOFError, OSError):
                break
            kind = message[0]
            if kind == "event":
                batch = self._batch
                if message[1] < len(batch):
                    batch[message[1]].emit(generator_pb2.GenerateEvent.FromString(message[2]))
                continue
            report: DeviceReport = message[-1]
            self._loaded = frozenset(report.loaded)
            self._on_report(report)
            reply = self._reply
            if reply is None or reply.done():
                continue
            if kind == "ok":
                reply.set_result(message[1])
            else:
                reply.set_exception(_rebuild_error(message[1], message[2]))
        process.join(_STOP_WAIT_S)
        if process.exitcode != 0:  # 0: it was asked to stop
            logs.event(log, "generator.device_process_exited", logging.ERROR, pid=process.pid,
                       exit_code=process.exitcode)
        reply = self._reply
        # A reply pending now belongs to this child only if no newer child has been started.
        if self._process is process and reply is not None and not reply.done():
            reply.set_exception(Unavailable(
                f"the generator's device process exited (code {process.exitcode}) during this request; "
                "the next request starts a new one, retry"))


def _rebuild_error(name: str, message: str) -> Exception:
    """The child's error as the same FacegenError (its message is caller-safe), else a plain error."""
    kind = getattr(errors, name, None)
    if isinstance(kind, type) and issubclass(kind, FacegenError):
        return kind(message)
    return RuntimeError(message)


class _SharedFlag:
    """One batch member's cancel flag, as the step callback reads it."""

    def __init__(self, flags: Any, slot: int) -> None:
        self._flags = flags
        self._slot = slot

    def is_set(self) -> bool:
        return bool(self._flags[self._slot])


class _Member:
    """A batch member in the child: its parameters, flag and progress, and a way to send events."""

    def __init__(self, slot: int, params: GenerationParams, conn: multiprocessing.connection.Connection,
                 cancel: Any, progress: Any) -> None:
        self.params = params
        self.cancelled = _SharedFlag(cancel, slot)
        self._slot = slot
        self._conn = conn
        self._progress = progress

    @property
    def progress(self) -> int:
        return int(self._progress[self._slot])

    @progress.setter
    def progress(self, value: int) -> None:
        self._progress[self._slot] = value

    def emit(self, event: generator_pb2.GenerateEvent) -> None:
        self._conn.send(("event", self._slot, event.SerializeToString()))


def child_main(settings: Settings, device_name: str, conn: multiprocessing.connection.Connection,
               cancel: Any, progress: Any) -> None:
    """The child: serves commands until ``stop`` or until the parent's end of the pipe closes."""
    logs.configure("generator", settings.log_level, settings.log_format)
    quiet_libraries()
    device = Device(device_name)
    use_torch_threads(settings.torch_threads, device)
    registry = PipelineRegistry(load_catalog(settings.catalog_path, settings.models_dir), device,
                                settings.max_loaded_models, settings.max_loaded_loras)
    while True:
        try:
            message = conn.recv()
        except (EOFError, OSError):
            return  # the parent is gone
        if message[0] == "stop":
            return
        try:
            result = _handle(message, registry, device, conn, cancel, progress)
        except FacegenError as exc:
            conn.send(("error", type(exc).__name__, str(exc), registry.report()))
        except Exception as exc:
            logs.event(log, "generate.device_error", logging.ERROR, error=exc, exc_info=exc)
            conn.send(("error", "", f"{type(exc).__name__}: {exc}", registry.report()))
        else:
            conn.send(("ok", result, registry.report()))


def _handle(message: tuple[Any, ...], registry: PipelineRegistry, device: Device,
            conn: multiprocessing.connection.Connection, cancel: Any, progress: Any) -> Any:
    kind = message[0]
    if kind == "load":
        registry.get(message[1])
        return None
    if kind == "warm":
        return warm_up(registry.get(message[1]))
    if kind == "run":
        params: list[GenerationParams] = message[1]
        members = [_Member(slot, item, conn, cancel, progress) for slot, item in enumerate(params)]
        with logs.job_context(",".join(item.job_id for item in params)):
            try:
                output = run_batch(registry.get(params[0].model), members, device)
            except BatchInterrupted as stop:
                return ("interrupted", stop.step)
        images = [[(image.mode, image.size, image.tobytes()) for image in per_job] for per_job in output.images]
        return ("done", images, output.duration_ms, output.steps_run, output.denoise_ms)
    raise ValueError(f"unknown device command {kind!r}")
