"""Real-worker mode: N worker processes run the real face-swap handler, plus warm spares.

Each serving slot owns one worker process (``worker_process.py``) and takes jobs
from its endpoint's queue, one at a time. A running handler cannot be
interrupted, so a job that is cancelled or times out while running ends its
process; the slot then takes a spare that has already loaded and warmed up the
engine, and a new spare starts warming in the background. The next job
therefore waits for no warm-up, unless spares run out (more kills than
``spares`` within one warm-up time).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import sys
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from services.stack.runpod_emulator import log
from services.stack.runpod_emulator.endpoint import Endpoint
from services.stack.runpod_emulator.jobs import COMPLETED, FAILED, NO_OUTPUT, Job
from services.stack.runpod_emulator.scripted import INJECTED_FAILURE

REPO_ROOT = Path(__file__).resolve().parents[3]
START_TIMEOUT_S = 180.0
LINE_LIMIT = 64 * 1024 * 1024  # one JSON line carries a job's input or output (images as base64)


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


class WorkerDied(Exception):
    """The worker process ended (crash, kill) before it answered."""

    def __init__(self, exitcode: int | None) -> None:
        super().__init__(f"worker process exited unexpectedly (code {exitcode})")
        self.exitcode = exitcode


class WorkerProcess:
    """One process running the real handler, spoken to in JSON lines."""

    def __init__(self, name: str, python: str, env: Mapping[str, str]) -> None:
        self.name = name
        self.python = python
        self.env = dict(env)
        self.pid: int | None = None
        self._process: asyncio.subprocess.Process | None = None

    async def start(self) -> WorkerProcess:
        """Spawn the process and wait until it has warmed up the engine; returns self."""
        started = time.monotonic()
        env = {**os.environ, **self.env,
               "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO_ROOT), os.environ.get("PYTHONPATH")]))}
        self._process = await asyncio.create_subprocess_exec(
            self.python, "-m", "services.stack.runpod_emulator.worker_process", cwd=REPO_ROOT, env=env,
            stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE, limit=LINE_LIMIT)
        try:
            line = await asyncio.wait_for(self._read_line(), START_TIMEOUT_S)
        except (WorkerDied, TimeoutError):
            await self.kill()
            log.event("worker.start_failed", worker=self.name, exitcode=self._process.returncode)
            raise
        self.pid = int(line["ready"])
        log.event("worker.ready", worker=self.name, pid=self.pid,
                  startup_ms=round((time.monotonic() - started) * 1000))
        return self

    async def run(self, job_id: str, action: str, job_input: Any) -> Any:
        """The handler's output for one job input; raises WorkerDied if the process ends first."""
        process = self._process
        assert process is not None and process.stdin is not None
        try:
            process.stdin.write(json.dumps({"id": job_id, "action": action, "input": job_input}).encode() + b"\n")
            await process.stdin.drain()
        except (ConnectionError, RuntimeError):
            raise WorkerDied(await process.wait()) from None
        return (await self._read_line())["output"]

    async def _read_line(self) -> dict[str, Any]:
        process = self._process
        assert process is not None and process.stdout is not None
        line = await process.stdout.readline()
        if not line.endswith(b"\n"):
            raise WorkerDied(await process.wait())
        answer: dict[str, Any] = json.loads(line)
        return answer

    async def kill(self) -> None:
        """End the process at once (it cannot be interrupted otherwise) and reap it."""
        process = self._process
        if process is None:
            return
        with contextlib.suppress(ProcessLookupError):
            process.kill()
        await process.wait()
        if process.stdin is not None:
            process.stdin.close()


class WorkerPool:
    """``workers`` serving slots, each with one worker process, and ``spares`` warm processes in reserve."""

    def __init__(self, workers: int, env: Mapping[str, str] | None = None, spares: int = 1,
                 python: str | None = None) -> None:
        if workers < 1 or spares < 0:
            raise ValueError("a pool needs at least one worker and no negative number of spares")
        self.size = workers
        self.spare_count = spares
        self.env = dict(env or {})
        self.python = python or sys.executable
        self.states: dict[str, str] = {f"local-worker-{i}": "initializing" for i in range(workers)}
        self._endpoint: Endpoint | None = None
        self._work = asyncio.Event()
        self._spares: list[asyncio.Task[WorkerProcess]] = []
        self._processes: set[WorkerProcess] = set()
        self._slots: list[asyncio.Task[None]] = []
        self._running: dict[Job, str] = {}
        self._started = 0
        self._spawned = 0

    # ---- Runner ----

    def bind(self, endpoint: Endpoint) -> None:
        """Remember the endpoint whose queue the slots serve."""
        self._endpoint = endpoint

    def queued(self, job: Job) -> None:
        """Wake the idle slots."""
        self._work.set()

    def ended(self, job: Job) -> None:
        """Nothing to do here: the slot running the job sees it end and replaces its process."""

    def ready(self) -> bool:
        """True once every slot has had its first worker process ready."""
        return self._started >= self.size

    def workers(self) -> dict[str, int]:
        """Counts of the serving slots by state (spares are not serving)."""
        states = list(self.states.values())
        idle, running = states.count("idle"), states.count("running")
        return {"idle": idle, "initializing": states.count("initializing"), "ready": idle + running,
                "running": running, "throttled": 0, "unhealthy": states.count("unhealthy")}

    async def start(self) -> None:
        """Start the slots (each spawns its first process) and warm the spares."""
        self._refill_spares()
        loop = asyncio.get_running_loop()
        self._slots = [loop.create_task(self._serve(name)) for name in self.states]

    async def stop(self) -> None:
        """Stop the slots and kill every process, spares included."""
        for task in [*self._slots, *self._spares]:
            task.cancel()
        await asyncio.gather(*self._slots, *self._spares, return_exceptions=True)
        await asyncio.gather(*(process.kill() for process in list(self._processes)))

    # ---- processes ----

    def _spawn(self, role: str) -> asyncio.Task[WorkerProcess]:
        self._spawned += 1
        process = WorkerProcess(f"{role}-process-{self._spawned}", self.python, self.env)
        self._processes.add(process)
        return asyncio.get_running_loop().create_task(process.start())

    def _refill_spares(self) -> None:
        self._spares = [task for task in self._spares if not (task.done() and task.exception() is not None)]
        while len(self._spares) < self.spare_count:
            self._spares.append(self._spawn("spare"))

    async def _take_process(self) -> WorkerProcess:
        """A warm spare if one is ready, else the spare nearest to ready, else a new process."""
        if self._spares and self._started >= self.size:
            ready = [task for task in self._spares if task.done() and task.exception() is None]
            task = ready[0] if ready else self._spares[0]
            self._spares.remove(task)
        else:
            task = self._spawn("worker")
        self._refill_spares()
        return await task

    async def _retire(self, process: WorkerProcess) -> None:
        await process.kill()
        self._processes.discard(process)

    # ---- slots ----

    async def _serve(self, name: str) -> None:
        assert self._endpoint is not None
        endpoint = self._endpoint
        process: WorkerProcess | None = None
        first = True
        while True:
            if process is None:
                self.states[name] = "initializing"
                try:
                    process = await self._take_process()
                except (WorkerDied, TimeoutError):
                    self.states[name] = "unhealthy"
                    await asyncio.sleep(1.0)
                    continue
                log.event("worker.assigned", worker=name, process=process.name, pid=process.pid)
                if first:
                    first, self._started = False, self._started + 1
            self.states[name] = "idle"
            while not endpoint.queue:
                self._work.clear()
                await self._work.wait()
            job = endpoint.queue[0]
            attempt = endpoint.start(job, name)
            self.states[name] = "running"
            if not await self._run(endpoint, job, attempt, process, name):
                await self._retire(process)
                process = None

    async def _run(self, endpoint: Endpoint, job: Job, attempt: int, process: WorkerProcess, slot: str) -> bool:
        """Run one job on the slot's process; False when the process had to end (or ended)."""
        if job.fate == "fail":
            endpoint.finish(job, attempt, FAILED, NO_OUTPUT, INJECTED_FAILURE)
            return True
        if job.fate == "hang":  # never answers: holds the slot until cancel, executionTimeout or ttl
            while endpoint.is_active(job, attempt):
                await job.changed.wait()
            return True
        action = "unchanged" if job.fate == "unchanged" else "run"
        answer = asyncio.get_running_loop().create_task(process.run(job.id, action, job.input))
        if job.fate == "crash":  # the handler's process dies mid-job, as on an out-of-memory kill
            await asyncio.sleep(0)
            await process.kill()
        try:
            while not answer.done():
                if not endpoint.is_active(job, attempt):
                    log.event("worker.restart", worker=slot, id=job.id, pid=process.pid,
                              reason="job ended while running")
                    answer.cancel()
                    with contextlib.suppress(asyncio.CancelledError, WorkerDied):
                        await answer
                    return False
                changed = asyncio.get_running_loop().create_task(job.changed.wait())
                await asyncio.wait({answer, changed}, return_when=asyncio.FIRST_COMPLETED)
                changed.cancel()
            output = answer.result()
        except WorkerDied as died:
            log.event("worker.crashed", worker=slot, id=job.id, pid=process.pid, exitcode=died.exitcode)
            endpoint.finish(job, attempt, FAILED, NO_OUTPUT, str(died))
            return False
        status, result, error = to_run_result(output)
        endpoint.finish(job, attempt, status, NO_OUTPUT if result is None else result, error)
        return True
