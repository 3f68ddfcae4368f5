"""The HTTP side: RunPod's queue API on loopback (stdlib ThreadingHTTPServer, one thread per connection)."""

from __future__ import annotations

import hmac
import json
import re
import threading
import time
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, urlsplit

from services.faceswap_worker.endpoint import log
from services.faceswap_worker.endpoint.faults import Faults, FaultState, parse_faults
from services.faceswap_worker.endpoint.jobs import (
    TERMINAL,
    JobNotFound,
    JobStore,
    NotRetryable,
    QueueFull,
)
from services.faceswap_worker.endpoint.pool import WorkerSlot

RUN_PAYLOAD_LIMIT = 10 * 1024 * 1024  # RunPod's documented /run limit
RUNSYNC_PAYLOAD_LIMIT = 20 * 1024 * 1024  # and /runsync's
MAX_WAIT_MS = 300_000
RUNSYNC_DEFAULT_WAIT_MS = 90_000

_JOB_ROUTE = re.compile(r"^/v2/([^/]+)/(status|cancel|retry|stream)/([^/]+)/?$")
_ENDPOINT_ROUTE = re.compile(r"^/v2/([^/]+)/(run|runsync|health|purge-queue)/?$")


@dataclass(frozen=True)
class ServerConfig:
    """What the HTTP layer needs to know."""

    endpoint_id: str
    api_key: str


class HttpError(Exception):
    """An API error answered as ``{"error": message}`` with ``status``."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


class Endpoint:
    """State shared by the request threads."""

    def __init__(self, config: ServerConfig, store: JobStore, slots: list[WorkerSlot], faults: FaultState) -> None:
        self.config = config
        self.store = store
        self.slots = slots
        self.faults = faults
        self.started = threading.Event()  # every initial worker reported ready

    def health(self) -> tuple[int, dict[str, Any]]:
        states = [s.state for s in self.slots]
        idle, running = states.count("idle"), states.count("running")
        body = {
            "jobs": self.store.counts(),
            "workers": {
                "idle": idle,
                "initializing": states.count("initializing"),
                "ready": idle + running,
                "running": running,
                "throttled": 0,
                "unhealthy": states.count("unhealthy"),
            },
        }
        return (200 if self.started.is_set() else 503), body


def _wait_ms(query: dict[str, list[str]], default: int) -> int:
    raw = query.get("wait", [str(default)])[0]
    try:
        return max(0, min(MAX_WAIT_MS, int(raw)))
    except ValueError as exc:
        raise HttpError(400, f"wait must be an integer number of milliseconds, got {raw!r}") from exc


def _policy(body: dict[str, Any]) -> dict[str, Any]:
    policy = body.get("policy") or {}
    if not isinstance(policy, dict):
        raise HttpError(400, "policy must be an object")
    out: dict[str, Any] = {}
    for key in ("executionTimeout", "ttl"):
        value = policy.get(key)
        if value is None:
            continue
        if isinstance(value, bool) or not isinstance(value, int | float) or value <= 0:
            raise HttpError(400, f"policy.{key} must be a positive number of milliseconds")
        out[key] = float(value)
    return out


class RequestHandler(BaseHTTPRequestHandler):
    """Routes one request; the Endpoint is on the server object."""

    protocol_version = "HTTP/1.1"
    server: EndpointHTTPServer

    def log_message(self, format: str, *args: Any) -> None:
        pass  # requests are logged as events below, not in the stdlib's format

    def do_GET(self) -> None:
        self._handle("GET")

    def do_POST(self) -> None:
        self._handle("POST")

    def do_DELETE(self) -> None:
        self._handle("DELETE")

    # -- plumbing ---------------------------------------------------------------------------
    def _send(self, status: int, body: Any, raw: bytes | None = None) -> None:
        data = raw if raw is not None else json.dumps(body, separators=(",", ":")).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)
        if status >= 400:
            log.event("http.error", method=self.command, path=urlsplit(self.path).path, status=status)

    def _authorized(self) -> bool:
        header = self.headers.get("Authorization", "")
        token = header[7:].strip() if header.lower().startswith("bearer ") else header.strip()
        return bool(token) and hmac.compare_digest(token.encode(), self.server.endpoint.config.api_key.encode())

    def _body(self, limit: int) -> Any:
        length_header = self.headers.get("Content-Length")
        if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
            raise HttpError(411, "chunked bodies are not supported; send Content-Length")
        length = int(length_header) if length_header and length_header.isdigit() else 0
        if length > limit:
            # Drain a moderately large body so the client can read the 413; drop the connection otherwise.
            if length <= 4 * limit:
                remaining = length
                while remaining > 0:
                    chunk = self.rfile.read(min(remaining, 1 << 20))
                    if not chunk:
                        break
                    remaining -= len(chunk)
            self.close_connection = True
            raise HttpError(413, f"payload too large: {length} bytes > limit {limit}")
        raw = self.rfile.read(length) if length else b""
        if not raw.strip():
            return None
        try:
            return json.loads(raw)
        except ValueError as exc:
            raise HttpError(400, "body is not valid JSON") from exc

    def _handle(self, method: str) -> None:
        try:
            self._route(method)
        except HttpError as exc:
            self._send(exc.status, {"error": str(exc)})
        except (BrokenPipeError, ConnectionResetError):
            self.close_connection = True
        except Exception as exc:  # keep the server up; say what broke
            log.event("http.internal_error", error=repr(exc))
            self._send(500, {"error": "internal server error"})

    def _route(self, method: str) -> None:
        endpoint = self.server.endpoint
        parts = urlsplit(self.path)
        path, query = parts.path, parse_qs(parts.query)
        if not (path.startswith("/v2/") or path.startswith("/admin/")):
            raise HttpError(404, "not found")
        if not self._authorized():
            raise HttpError(401, "unauthorized: missing or wrong API key")
        if path.rstrip("/") == "/admin/faults":
            self._faults(method)
            return
        job_match, ep_match = _JOB_ROUTE.match(path), _ENDPOINT_ROUTE.match(path)
        match = job_match or ep_match
        if match is None:
            raise HttpError(404, "not found")
        if match.group(1) != endpoint.config.endpoint_id:
            raise HttpError(404, f"endpoint {match.group(1)!r} not found")
        route = match.group(2)
        latency_ms, action = endpoint.faults.for_request(route)
        if latency_ms:
            time.sleep(latency_ms / 1000.0)
        if action == "error":
            status = endpoint.faults.get().error_status
            raise HttpError(status, "injected error (fault injection)")
        if action == "malformed":
            self._send(200, None, raw=b'{"id": "malformed-by-fault-injection", "status": ')
            return
        if job_match:
            self._job_route(method, route, job_match.group(3), query)
        else:
            self._endpoint_route(method, route, query)

    # -- routes -----------------------------------------------------------------------------
    def _endpoint_route(self, method: str, route: str, query: dict[str, list[str]]) -> None:
        endpoint = self.server.endpoint
        if route == "health":
            if method != "GET":
                raise HttpError(405, "use GET")
            status, body = endpoint.health()
            self._send(status, body)
            return
        if method != "POST":
            raise HttpError(405, "use POST")
        if route == "purge-queue":
            self._body(RUN_PAYLOAD_LIMIT)
            self._send(200, {"removed": endpoint.store.purge_queue(), "status": "completed"})
            return
        sync = route == "runsync"
        wait_ms = _wait_ms(query, RUNSYNC_DEFAULT_WAIT_MS) if sync else 0
        body = self._body(RUNSYNC_PAYLOAD_LIMIT if sync else RUN_PAYLOAD_LIMIT)
        if not isinstance(body, dict) or "input" not in body:
            raise HttpError(400, 'body must be a JSON object with an "input" key')
        policy = _policy(body)
        try:
            job = endpoint.store.submit(body["input"], policy, endpoint.faults.for_job(), sync)
        except QueueFull as exc:
            raise HttpError(429, str(exc)) from exc
        if not sync:
            self._send(200, {"id": job.id, "status": job.status})
            return
        snapshot = endpoint.store.wait_change(job.id, wait_ms / 1000.0, until_terminal=True)
        if snapshot["status"] in TERMINAL:
            self._send(200, snapshot)
        else:
            self._send(200, {"id": job.id, "status": snapshot["status"]})

    def _job_route(self, method: str, route: str, job_id: str, query: dict[str, list[str]]) -> None:
        store = self.server.endpoint.store
        try:
            if route in ("status", "stream"):
                if method not in ("GET", "POST"):
                    raise HttpError(405, "use GET or POST")
                wait_ms = _wait_ms(query, 0)
                snapshot = store.wait_change(job_id, wait_ms / 1000.0) if wait_ms else store.snapshot(job_id)
                if route == "stream":
                    chunks = [{"output": snapshot["output"]}] if "output" in snapshot else []
                    snapshot = {"status": snapshot["status"], "stream": chunks}
                self._send(200, snapshot)
            elif route == "cancel":
                if method != "POST":
                    raise HttpError(405, "use POST")
                self._send(200, store.cancel(job_id))
            else:
                if method != "POST":
                    raise HttpError(405, "use POST")
                try:
                    self._send(200, store.retry(job_id))
                except NotRetryable as exc:
                    raise HttpError(400, str(exc)) from exc
                except QueueFull as exc:
                    raise HttpError(429, str(exc)) from exc
        except JobNotFound as exc:
            raise HttpError(404, f"job {job_id} not found (unknown, purged or past its retention)") from exc

    def _faults(self, method: str) -> None:
        state = self.server.endpoint.faults
        if method == "GET":
            pass
        elif method == "POST":
            try:
                state.set(parse_faults(self._body(RUN_PAYLOAD_LIMIT) or {}, state.get()))
            except ValueError as exc:
                raise HttpError(400, str(exc)) from exc
            log.event("faults.changed", **state.get().to_json())
        elif method == "DELETE":
            state.set(Faults())
            log.event("faults.cleared")
        else:
            raise HttpError(405, "use GET, POST or DELETE")
        self._send(200, state.get().to_json())


class EndpointHTTPServer(ThreadingHTTPServer):
    """ThreadingHTTPServer with a deep accept backlog, carrying the shared Endpoint."""

    daemon_threads = True
    request_queue_size = 1024

    def __init__(self, address: tuple[str, int], endpoint: Endpoint) -> None:
        self.endpoint = endpoint
        super().__init__(address, RequestHandler)
