"""A scripted fake of the RunPod Serverless queue API on loopback, for the swapper's tests and bench.

A real HTTP/1.1 server (asyncio, keep-alive, in its own thread) that speaks
``/v2/{endpoint}/run``, ``/status/{id}`` (with ``?wait=ms`` long-polling),
``/cancel/{id}`` and ``/health`` with Bearer auth, runs jobs on a timeline
(IN_QUEUE for ``queue_s``, IN_PROGRESS for ``run_s``, then the planned final
status), and records every request so tests can count them. Faults are
scripted per endpoint and route: an HTTP status (with Retry-After), a
non-JSON body, a connection reset, or a hang.

    fake = FakeRunPod(api_key="k").start()
    ep = fake.endpoint("ep1")
    ep.plan = JobPlan(run_s=0.2)
    ep.script("status", Fault.http(503), times=2)
    ...
    assert fake.count("cancel", endpoint="ep1") == 1
    fake.stop()

By default a job downloads its ``source_file`` and ``target_file`` (so the
presigned URLs are really exercised) and returns the target with inverted
colours as raw base64 PNG in ``output.result``.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import io
import itertools
import json
import socket
import struct
import threading
import time
import urllib.request
import uuid
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import parse_qs, urlsplit

from PIL import Image, ImageOps

TERMINAL = {"COMPLETED", "FAILED", "CANCELLED", "TIMED_OUT"}
DEFAULT = object()


def png_bytes(size: tuple[int, int] = (32, 32), color: tuple[int, int, int] = (40, 160, 90)) -> bytes:
    """A small valid PNG."""
    out = io.BytesIO()
    Image.new("RGB", size, color).save(out, "PNG")
    return out.getvalue()


@dataclass
class JobPlan:
    """How a job runs: queue and run times, then its final status and output."""

    queue_s: float = 0.0
    run_s: float = 0.05
    final: str = "COMPLETED"
    # DEFAULT: the inverted target (or a fixed PNG when fetch_inputs is False);
    # a callable gets the FakeJob and returns the output.
    output: Any = DEFAULT
    error: Any = None
    fetch_inputs: bool = True


@dataclass
class Fault:
    """One scripted misbehaviour for one request."""

    kind: str  # "http" | "reset" | "hang" | "delay"
    status: int = 500
    body: bytes = b""
    content_type: str = "application/json"
    headers: dict[str, str] = field(default_factory=dict)
    seconds: float = 0.0

    @classmethod
    def http(cls, status: int, body: Any = None, retry_after: str | None = None) -> Fault:
        """An HTTP error answer (JSON body)."""
        payload = json.dumps(body if body is not None else {"error": f"fake error {status}"}).encode()
        headers = {"Retry-After": retry_after} if retry_after is not None else {}
        return cls("http", status=status, body=payload, headers=headers)

    @classmethod
    def non_json(cls, status: int = 200, body: bytes = b"<html>Bad Gateway</html>") -> Fault:
        """An answer whose body is not JSON."""
        return cls("http", status=status, body=body, content_type="text/html")

    @classmethod
    def json_body(cls, body: Any, status: int = 200) -> Fault:
        """A well-formed answer with the given JSON body."""
        return cls("http", status=status, body=json.dumps(body).encode())

    @classmethod
    def reset(cls) -> Fault:
        """Close the connection with a TCP RST, no answer."""
        return cls("reset")

    @classmethod
    def delay(cls, seconds: float) -> Fault:
        """Answer normally, but only after ``seconds``."""
        return cls("delay", seconds=seconds)

    @classmethod
    def hang(cls, seconds: float = 30.0) -> Fault:
        """Answer nothing for ``seconds``, then close."""
        return cls("hang", seconds=seconds)


@dataclass
class Recorded:
    """One request the fake received."""

    method: str
    path: str
    route: str
    endpoint: str
    job_id: str
    query: dict[str, str]
    authorization: str
    body: Any
    at: float


class FakeJob:
    """A job on the fake endpoint's timeline."""

    def __init__(self, endpoint: FakeEndpoint, job_input: dict[str, Any], policy: Any, plan: JobPlan) -> None:
        self.id = f"fake-{uuid.uuid4().hex[:12]}"
        self.endpoint = endpoint
        self.input = job_input
        self.policy = policy
        self.plan = plan
        self.created = time.monotonic()
        self.started = self.created + plan.queue_s
        self.ends = self.started + plan.run_s
        self.cancelled_at: float | None = None
        self.inputs: asyncio.Future[tuple[bytes, bytes]] | None = None
        self.changed = asyncio.Event()

    def status_at(self, now: float) -> str:
        """The status at monotonic time ``now``."""
        if self.cancelled_at is not None and self.cancelled_at < self.ends:
            return "CANCELLED"
        if now < self.started:
            return "IN_QUEUE"
        if now < self.ends:
            return "IN_PROGRESS"
        return self.plan.final

    @property
    def finished_at(self) -> float:
        """When the job reached (or will reach) its final status."""
        if self.cancelled_at is not None and self.cancelled_at < self.ends:
            return self.cancelled_at
        return self.ends

    def next_change(self, now: float) -> float:
        """When the status next changes on its own (inf when it never does)."""
        if self.cancelled_at is not None and self.cancelled_at < self.ends:
            return float("inf")
        for moment in (self.started, self.ends):
            if now < moment:
                return moment
        return float("inf")


class FakeEndpoint:
    """One endpoint id: its plan, its scripted faults, its jobs."""

    def __init__(self, fake: FakeRunPod, endpoint_id: str) -> None:
        self.fake = fake
        self.id = endpoint_id
        self.plan: JobPlan | Callable[[dict[str, Any]], JobPlan] = JobPlan()
        self.supports_wait = True
        self.jobs: dict[str, FakeJob] = {}
        self._faults: dict[str, deque[list[Any]]] = {}
        self.health_body: dict[str, Any] | None = None

    def script(self, route: str, fault: Fault, times: int | None = 1) -> FakeEndpoint:
        """The next ``times`` requests on ``route`` get ``fault`` (None: every request from now on)."""
        self._faults.setdefault(route, deque()).append([fault, times])
        return self

    def clear(self, route: str | None = None) -> None:
        """Drops the scripted faults (of one route, or all)."""
        if route is None:
            self._faults.clear()
        else:
            self._faults.pop(route, None)

    def next_fault(self, route: str) -> Fault | None:
        """Consumes the next scripted fault for ``route``."""
        queue = self._faults.get(route)
        if not queue:
            return None
        entry = queue[0]
        fault, times = entry
        if times is not None:
            entry[1] = times - 1
            if entry[1] <= 0:
                queue.popleft()
        return fault  # type: ignore[no-any-return]

    def plan_for(self, job_input: dict[str, Any]) -> JobPlan:
        """The plan of a new job."""
        return self.plan(job_input) if callable(self.plan) else self.plan


def cycle_plans(plans: list[JobPlan]) -> Callable[[dict[str, Any]], JobPlan]:
    """A plan function giving each new job the next plan of ``plans``, round and round."""
    source = itertools.cycle(plans)
    lock = threading.Lock()

    def next_plan(_input: dict[str, Any]) -> JobPlan:
        with lock:
            return next(source)

    return next_plan


class FakeRunPod:
    """The fake queue API server; see the module docstring."""

    def __init__(self, api_key: str = "fake-runpod-key", host: str = "127.0.0.1") -> None:
        self.api_key = api_key
        self.host = host
        self.port = 0
        self.requests: list[Recorded] = []
        self.endpoints: dict[str, FakeEndpoint] = {}
        self.files: dict[str, tuple[bytes, str]] = {}
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._server: asyncio.base_events.Server | None = None
        self._handlers: set[asyncio.Task[None]] = set()
        self._default_output = base64.b64encode(png_bytes()).decode()

    # ---- control (called from the test's thread) ----

    @property
    def base_url(self) -> str:
        """``http://127.0.0.1:PORT/v2`` (RUNPOD_API_BASE)."""
        return f"http://{self.host}:{self.port}/v2"

    def endpoint(self, endpoint_id: str) -> FakeEndpoint:
        """The endpoint with this id (created on first use)."""
        if endpoint_id not in self.endpoints:
            self.endpoints[endpoint_id] = FakeEndpoint(self, endpoint_id)
        return self.endpoints[endpoint_id]

    def add_file(self, data: bytes, content_type: str = "image/png") -> str:
        """Serves ``data`` (no auth needed) and returns its URL, for result_url outputs."""
        name = uuid.uuid4().hex
        self.files[name] = (data, content_type)
        return f"http://{self.host}:{self.port}/files/{name}"

    def count(self, route: str | None = None, endpoint: str | None = None, job_id: str | None = None) -> int:
        """How many requests matched."""
        return sum(1 for r in list(self.requests)
                   if (route is None or r.route == route) and (endpoint is None or r.endpoint == endpoint)
                   and (job_id is None or r.job_id == job_id))

    def jobs(self) -> list[FakeJob]:
        """Every job on every endpoint."""
        return [job for ep in list(self.endpoints.values()) for job in list(ep.jobs.values())]

    def job(self, job_id: str) -> FakeJob:
        """A job by id."""
        for job in self.jobs():
            if job.id == job_id:
                return job
        raise KeyError(job_id)

    def start(self) -> FakeRunPod:
        """Starts serving in a thread; returns self."""
        ready = threading.Event()
        self._loop = asyncio.new_event_loop()

        def run() -> None:
            assert self._loop is not None
            asyncio.set_event_loop(self._loop)
            self._server = self._loop.run_until_complete(
                asyncio.start_server(self._serve, self.host, 0, backlog=1024))
            self.port = self._server.sockets[0].getsockname()[1]
            ready.set()
            self._loop.run_forever()

        self._thread = threading.Thread(target=run, name="fake-runpod", daemon=True)
        self._thread.start()
        ready.wait(5)
        return self

    def stop(self) -> None:
        """Stops serving and closes every connection."""
        if self._loop is None:
            return
        loop = self._loop

        async def shutdown() -> None:
            if self._server is not None:
                self._server.close()
            for task in list(self._handlers):
                task.cancel()
            await asyncio.gather(*self._handlers, return_exceptions=True)

        asyncio.run_coroutine_threadsafe(shutdown(), loop).result(10)
        loop.call_soon_threadsafe(loop.stop)
        if self._thread is not None:
            self._thread.join(10)
        loop.close()
        self._loop = None

    def __enter__(self) -> FakeRunPod:
        return self.start()

    def __exit__(self, *_exc: object) -> None:
        self.stop()

    # ---- serving (in the fake's thread) ----

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._handlers.add(task)
        try:
            while True:
                try:
                    head = await reader.readuntil(b"\r\n\r\n")
                except (asyncio.IncompleteReadError, ConnectionError, asyncio.LimitOverrunError):
                    return
                lines = head.decode("latin-1").split("\r\n")
                method, target, _version = lines[0].split(" ", 2)
                headers = {}
                for line in lines[1:]:
                    if ":" in line:
                        name, value = line.split(":", 1)
                        headers[name.strip().lower()] = value.strip()
                length = int(headers.get("content-length", "0") or 0)
                body = await reader.readexactly(length) if length else b""
                keep = await self._handle(method, target, headers, body, writer)
                if not keep or headers.get("connection", "").lower() == "close":
                    return
        except (ConnectionError, asyncio.IncompleteReadError):
            return
        except asyncio.CancelledError:
            # stop() cancels handlers that are sleeping (hangs, long-polls); end quietly, since
            # asyncio's stream callback would report a cancelled handler as an error.
            return
        finally:
            self._handlers.discard(task)
            if not writer.transport.is_closing():
                writer.close()

    async def _handle(self, method: str, target: str, headers: dict[str, str], body: bytes,
                      writer: asyncio.StreamWriter) -> bool:
        parts = urlsplit(target)
        query = {key: values[-1] for key, values in parse_qs(parts.query).items()}
        segments = [segment for segment in parts.path.split("/") if segment]
        if len(segments) >= 2 and segments[0] == "files":
            self._record(method, parts.path, "files", "", segments[1], query, headers, None)
            return await self._serve_file(segments[1], writer)
        if len(segments) < 3 or segments[0] != "v2":
            return await self._send(writer, 404, {"error": "not found"})
        endpoint_id, route = segments[1], segments[2]
        job_id = segments[3] if len(segments) > 3 else ""
        try:
            payload = json.loads(body) if body else None
        except ValueError:
            payload = None
        self._record(method, parts.path, route, endpoint_id, job_id, query, headers, payload)
        if headers.get("authorization") != f"Bearer {self.api_key}":
            return await self._send(writer, 401, {"error": "Unauthorized"})
        endpoint = self.endpoints.get(endpoint_id)
        if endpoint is None:
            return await self._send(writer, 404, {"error": f"endpoint {endpoint_id} not found"})
        fault = endpoint.next_fault(route)
        if fault is not None and fault.kind == "delay":
            await asyncio.sleep(fault.seconds)
        elif fault is not None:
            return await self._fault(fault, writer)
        if route == "run" and method == "POST":
            return await self._run(endpoint, payload, writer)
        if route == "status" and job_id:
            return await self._status(endpoint, job_id, query, writer)
        if route == "cancel" and method == "POST" and job_id:
            return await self._cancel(endpoint, job_id, writer)
        if route == "health":
            return await self._send(writer, 200, endpoint.health_body or self._health(endpoint))
        return await self._send(writer, 404, {"error": "no such route"})

    def _record(self, method: str, path: str, route: str, endpoint: str, job_id: str, query: dict[str, str],
                headers: dict[str, str], body: Any) -> None:
        self.requests.append(Recorded(method, path, route, endpoint, job_id, query,
                                      headers.get("authorization", ""), body, time.monotonic()))

    async def _fault(self, fault: Fault, writer: asyncio.StreamWriter) -> bool:
        if fault.kind == "reset":
            sock = writer.get_extra_info("socket")
            if sock is not None:
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            writer.transport.abort()
            return False
        if fault.kind == "hang":
            await asyncio.sleep(fault.seconds)
            writer.transport.abort()
            return False
        return await self._send_raw(writer, fault.status, fault.body, fault.content_type, fault.headers)

    async def _run(self, endpoint: FakeEndpoint, payload: Any, writer: asyncio.StreamWriter) -> bool:
        if not isinstance(payload, dict) or not isinstance(payload.get("input"), dict):
            return await self._send(writer, 400, {"error": "input is required"})
        plan = endpoint.plan_for(payload["input"])
        job = FakeJob(endpoint, payload["input"], payload.get("policy"), plan)
        if plan.fetch_inputs and plan.output is DEFAULT:
            loop = asyncio.get_running_loop()
            job.inputs = loop.run_in_executor(None, _fetch_inputs, payload["input"])
        endpoint.jobs[job.id] = job
        return await self._send(writer, 200, {"id": job.id, "status": "IN_QUEUE"})

    async def _status(self, endpoint: FakeEndpoint, job_id: str, query: dict[str, str],
                      writer: asyncio.StreamWriter) -> bool:
        job = endpoint.jobs.get(job_id)
        if job is None:
            return await self._send(writer, 404, {"error": "job not found"})
        wait_ms = int(query.get("wait", "0") or 0)
        if wait_ms > 0 and endpoint.supports_wait:
            await self._long_poll(job, wait_ms / 1000)
        return await self._send(writer, 200, await self._describe(job))

    async def _long_poll(self, job: FakeJob, wait_s: float) -> None:
        now = time.monotonic()
        until = now + wait_s
        first = job.status_at(now)
        while True:
            now = time.monotonic()
            status = job.status_at(now)
            if status != first or status not in ("IN_QUEUE", "IN_PROGRESS") or now >= until:
                return
            timeout = min(until, job.next_change(now)) - now
            job.changed.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(job.changed.wait(), timeout=max(0.0, timeout))

    async def _describe(self, job: FakeJob) -> dict[str, Any]:
        now = time.monotonic()
        status = job.status_at(now)
        answer: dict[str, Any] = {"id": job.id, "status": status}
        if now >= job.started and status != "IN_QUEUE":
            answer["delayTime"] = int(job.plan.queue_s * 1000)
        if status in TERMINAL or status not in ("IN_QUEUE", "IN_PROGRESS"):
            answer["executionTime"] = int((job.finished_at - job.started) * 1000)
        if status == "COMPLETED":
            output = await self._output(job)
            if isinstance(output, _Failed):
                answer["status"] = "FAILED"
                answer["error"] = output.error
            elif output is not _OMIT:
                answer["output"] = output
        elif status == "FAILED":
            answer["error"] = job.plan.error if job.plan.error is not None else "fake failure"
            if job.plan.output is not DEFAULT:
                answer["output"] = job.plan.output
        return answer

    async def _output(self, job: FakeJob) -> Any:
        plan = job.plan
        if callable(plan.output):
            return plan.output(job)
        if plan.output is not DEFAULT:
            return plan.output
        if job.inputs is None:
            return {"result": self._default_output}
        try:
            _source, target = await job.inputs
        except Exception as exc:
            return _Failed(f"could not download the inputs: {exc}")
        with Image.open(io.BytesIO(target)) as image:
            inverted = ImageOps.invert(image.convert("RGB"))
        out = io.BytesIO()
        inverted.save(out, "PNG")
        return {"result": base64.b64encode(out.getvalue()).decode()}

    async def _cancel(self, endpoint: FakeEndpoint, job_id: str, writer: asyncio.StreamWriter) -> bool:
        job = endpoint.jobs.get(job_id)
        if job is None:
            return await self._send(writer, 404, {"error": "job not found"})
        now = time.monotonic()
        if job.status_at(now) in ("IN_QUEUE", "IN_PROGRESS"):
            job.cancelled_at = now
            job.changed.set()
        return await self._send(writer, 200, {"id": job.id, "status": job.status_at(now)})

    @staticmethod
    def _health(endpoint: FakeEndpoint) -> dict[str, Any]:
        now = time.monotonic()
        statuses = [job.status_at(now) for job in endpoint.jobs.values()]
        return {
            "jobs": {"completed": statuses.count("COMPLETED"), "failed": statuses.count("FAILED"),
                     "inProgress": statuses.count("IN_PROGRESS"), "inQueue": statuses.count("IN_QUEUE"),
                     "retried": 0},
            "workers": {"idle": 1, "running": statuses.count("IN_PROGRESS")},
        }

    async def _serve_file(self, name: str, writer: asyncio.StreamWriter) -> bool:
        entry = self.files.get(name)
        if entry is None:
            return await self._send(writer, 404, {"error": "no such file"})
        data, content_type = entry
        return await self._send_raw(writer, 200, data, content_type, {})

    async def _send(self, writer: asyncio.StreamWriter, status: int, body: Any) -> bool:
        return await self._send_raw(writer, status, json.dumps(body).encode(), "application/json", {})

    @staticmethod
    async def _send_raw(writer: asyncio.StreamWriter, status: int, body: bytes, content_type: str,
                        headers: dict[str, str]) -> bool:
        extra = "".join(f"{name}: {value}\r\n" for name, value in headers.items())
        head = (f"HTTP/1.1 {status} X\r\nContent-Type: {content_type}\r\nContent-Length: {len(body)}\r\n"
                f"{extra}\r\n").encode("latin-1")
        writer.write(head + body)
        await writer.drain()
        return True


class _Failed:
    def __init__(self, error: str) -> None:
        self.error = error


_OMIT = object()


def _fetch_inputs(job_input: dict[str, Any]) -> tuple[bytes, bytes]:
    fetched = []
    for key in ("source_file", "target_file"):
        with urllib.request.urlopen(job_input[key], timeout=10) as response:
            data = response.read()
        Image.open(io.BytesIO(data)).verify()
        fetched.append(data)
    return fetched[0], fetched[1]
