"""Worker slots: each runs the real handler in its own process (or, in simulate mode, a timed stand-in)."""

from __future__ import annotations

import base64
import multiprocessing
import multiprocessing.connection
import os
import signal
import threading
import time
from collections.abc import Mapping
from multiprocessing.process import BaseProcess
from typing import Any

from services.faceswap_worker.endpoint import log
from services.faceswap_worker.endpoint.jobs import COMPLETED, FAILED, JobStore

_POLL_S = 0.02


def to_run_result(handler_output: Any) -> tuple[str, Any, str | None]:
    """(status, output, error) from a handler's return value, as runpod's ``rp_job.run_job`` maps it.

    A dict's ``error`` key makes the job FAILED with that error; an empty remaining dict is no output.
    """
    if isinstance(handler_output, dict):
        output = dict(handler_output)
        error = output.pop("error", None)
        output.pop("refresh_worker", None)
        if error:
            return FAILED, None, str(error)
        return COMPLETED, (output or None), None
    return COMPLETED, handler_output, None


def _die_with_parent() -> None:
    try:
        import ctypes

        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):  # not Linux: the closed pipe still ends the child when idle
        pass


def child_main(conn: multiprocessing.connection.Connection, env: Mapping[str, str]) -> None:
    """Worker process: load the handler, say ready, then run one job per message until the pipe closes."""
    _die_with_parent()
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the parent decides when workers stop
    os.environ.update(env)
    from services.faceswap_worker.handler import FaceSwapWorker

    worker = FaceSwapWorker()
    worker.warm_up()
    conn.send(("ready", os.getpid()))
    while True:
        try:
            message = conn.recv()
        except (EOFError, OSError):
            return
        if message is None:
            return
        job_id, job_input = message
        conn.send((job_id, worker.run(job_input)))


class WorkerSlot:
    """One worker: a thread that takes jobs from the store and runs them in a child process."""

    def __init__(self, index: int, store: JobStore, env: Mapping[str, str]) -> None:
        self.id = f"local-worker-{index}"
        self.store = store
        self.env = dict(env)
        self.state = "initializing"  # initializing | idle | running | unhealthy | stopped
        self.ready = threading.Event()
        self._stop = threading.Event()
        self._process: BaseProcess | None = None
        self._conn: multiprocessing.connection.Connection | None = None
        self._thread = threading.Thread(target=self._loop, name=self.id, daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        """Ask the thread to end and kill the child process."""
        self._stop.set()
        self._kill()

    def join(self, timeout: float) -> None:
        self._thread.join(timeout)

    def _spawn(self) -> bool:
        ctx = multiprocessing.get_context("spawn")
        parent, child = ctx.Pipe()
        process = ctx.Process(target=child_main, args=(child, self.env), name=self.id, daemon=True)
        self.state = "initializing"
        started = time.monotonic()
        process.start()
        child.close()
        self._process, self._conn = process, parent
        while not self._stop.is_set():
            if parent.poll(0.1):
                try:
                    tag, pid = parent.recv()
                except (EOFError, OSError):
                    break
                if tag == "ready":
                    log.event("worker.ready", worker=self.id, pid=pid,
                              startup_ms=round((time.monotonic() - started) * 1000))
                    self.state = "idle"
                    self.ready.set()
                    return True
            if not process.is_alive():
                break
        self.state = "unhealthy"
        log.event("worker.start_failed", worker=self.id, exitcode=process.exitcode)
        self._kill()
        return False

    def _kill(self) -> None:
        process, conn = self._process, self._conn
        self._process, self._conn = None, None
        if conn is not None:
            conn.close()
        if process is not None and process.is_alive():
            process.kill()
            process.join(5)

    def _loop(self) -> None:
        try:
            self._serve()
        except (OSError, ValueError):
            if not self._stop.is_set():
                raise
        finally:
            self.state = "stopped"

    def _serve(self) -> None:
        while not self._stop.is_set():
            if self._process is None and not self._spawn():
                self._stop.wait(1.0)
                continue
            taken = self.store.take(self.id, timeout=0.5)
            if taken is None:
                continue
            job, attempt = taken
            self.state = "running"
            try:
                self._run(job.id, attempt, job.input, job.fate)
            finally:
                self.state = "idle" if self._process is not None else "initializing"

    def _run(self, job_id: str, attempt: int, job_input: Any, fate: str | None) -> None:
        if fate == "fail":
            self.store.finish(job_id, attempt, FAILED, error="injected failure (fault injection)")
            return
        if fate == "hang":  # never answers: holds the worker until cancel, executionTimeout or ttl
            while not self._stop.is_set() and self.store.wait_inactive(job_id, attempt, 1.0):
                pass
            return
        conn = self._conn
        assert conn is not None
        try:
            conn.send((job_id, job_input))
            if fate == "crash" and self._process is not None:
                self._process.kill()  # the handler's process dies mid-job, as on an OOM kill
        except (OSError, ValueError):
            self._kill()
            self.store.finish(job_id, attempt, FAILED, error="worker process is not running")
            return
        while not self._stop.is_set():
            try:
                ready = conn.poll(_POLL_S)
                message = conn.recv() if ready else None
            except (EOFError, OSError, ValueError):
                break
            if message is not None:
                _, handler_output = message
                status, output, error = to_run_result(handler_output)
                self.store.finish(job_id, attempt, status, output, error)
                return
            if not self.store.is_active(job_id, attempt):
                # Cancelled or timed out while running: the only way to stop the handler is to
                # end its process; a fresh one is started for the next job.
                log.event("worker.restart", worker=self.id, id=job_id, reason="job ended while running")
                self._kill()
                return
        if self._stop.is_set():
            return  # shutting down: the job dies with the endpoint
        process = self._process
        self._kill()
        exitcode = process.exitcode if process is not None else None
        log.event("worker.crashed", worker=self.id, id=job_id, exitcode=exitcode)
        self.store.finish(job_id, attempt, FAILED, error=f"worker process exited unexpectedly (code {exitcode})")


class SimulatedSlot(WorkerSlot):
    """A worker that takes a fixed time and returns the target image re-encoded, without the engine.

    For load tests of clients (e.g. 200 concurrent 1 s jobs); runs as a thread, not a process.
    """

    def __init__(self, index: int, store: JobStore, env: Mapping[str, str], simulate_ms: int) -> None:
        super().__init__(index, store, env)
        self.simulate_s = simulate_ms / 1000.0
        from services.faceswap_worker.settings import WorkerSettings

        self.settings = WorkerSettings.from_env({**os.environ, **self.env})

    def _spawn(self) -> bool:
        self.state = "idle"
        self.ready.set()
        self._process = None
        return True

    def _loop(self) -> None:
        self._spawn()
        while not self._stop.is_set():
            taken = self.store.take(self.id, timeout=0.5)
            if taken is None:
                continue
            job, attempt = taken
            self.state = "running"
            try:
                self._simulate(job.id, attempt, job.input, job.fate)
            finally:
                self.state = "idle"

    def _simulate(self, job_id: str, attempt: int, job_input: Any, fate: str | None) -> None:
        if fate == "fail":
            self.store.finish(job_id, attempt, FAILED, error="injected failure (fault injection)")
            return
        if fate == "crash":
            self.store.finish(job_id, attempt, FAILED, error="worker process exited unexpectedly (code -9)")
            return
        # The echo is prepared inside the simulated time, so executionTime stays close to it.
        deadline = time.monotonic() + self.simulate_s
        result = to_run_result(self._echo(job_input))
        while not self._stop.is_set():
            remaining = 3600.0 if fate == "hang" else deadline - time.monotonic()
            if remaining <= 0 or not self.store.wait_inactive(job_id, attempt, remaining):
                break
        if not self.store.is_active(job_id, attempt):
            return
        status, output, error = result
        self.store.finish(job_id, attempt, status, output, error)

    def _echo(self, job_input: Any) -> dict[str, Any]:
        """The target image as the result: JPEG inputs are returned as they are (checked, not decoded)."""
        from services.faceswap_worker.inputs import InputError, decode_image, encode_jpeg, fetch_bytes, image_size

        if not isinstance(job_input, dict):
            return {"error": "input must be a JSON object"}
        field = "target_file" if "target_file" in job_input else "image_file"
        try:
            data = fetch_bytes(job_input.get(field), field, self.settings)
            width, height, fmt = image_size(data, field, self.settings)
            if fmt != "JPEG":
                image = decode_image(data, field, self.settings)
                data = encode_jpeg(image, self.settings.jpeg_quality)
        except InputError as exc:
            return {"error": str(exc)}
        return {"result": base64.b64encode(data).decode("ascii"), "width": width, "height": height,
                "backend": "simulated", "faces_swapped": 0}
