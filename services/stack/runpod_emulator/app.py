"""The HTTP side: RunPod's queue API, the emulator's admin API and served files, on FastAPI.

Every queue-API request goes through one pipeline: it is recorded, its key
checked, its endpoint found, then a scripted fault or the live fault settings
may answer instead, and only then does the route itself run.
"""

from __future__ import annotations

import asyncio
import hmac
import json
import socket
import struct
from collections.abc import Awaitable, Callable
from typing import Any

from fastapi import FastAPI, Request, Response
from pydantic import BaseModel, ConfigDict, Field, ValidationError
from starlette.exceptions import HTTPException
from starlette.types import ASGIApp, Receive, Scope, Send

from services.stack.runpod_emulator import log
from services.stack.runpod_emulator.endpoint import Endpoint, JobNotFound, NotRetryable, QueueFull
from services.stack.runpod_emulator.faults import ROUTES, Fault, Faults, Route, describe, parse_faults
from services.stack.runpod_emulator.jobs import TERMINAL
from services.stack.runpod_emulator.registry import Registry

RUN_PAYLOAD_LIMIT = 10 * 1024 * 1024  # RunPod's documented /run limit
RUNSYNC_PAYLOAD_LIMIT = 20 * 1024 * 1024  # and /runsync's
MAX_WAIT_MS = 300_000
RUNSYNC_DEFAULT_WAIT_MS = 90_000
TRANSPORT = "runpod_emulator.transport"


class HttpError(Exception):
    """An API error, answered as ``{"error": message}``."""

    def __init__(self, status: int, message: str, close: bool = False) -> None:
        super().__init__(message)
        self.status = status
        self.close = close


class Connections:
    """The outermost ASGI layer: gives routes the connection's transport, and ends requests quietly on stop.

    ASGI has no way to drop a connection without answering, which the reset and
    hang faults need; uvicorn's ``send`` is a method of its request cycle, which
    holds the transport. When the emulator stops it cancels the requests in
    flight (long-polls, hangs), which uvicorn would otherwise log as errors.
    """

    def __init__(self, app: ASGIApp) -> None:
        self.app = app
        self.closing = False

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            scope[TRANSPORT] = getattr(getattr(send, "__self__", None), "transport", None)
        try:
            await self.app(scope, receive, send)
        except asyncio.CancelledError:
            if not self.closing:
                raise


def json_response(status: int, body: Any, headers: dict[str, str] | None = None) -> Response:
    """A JSON answer."""
    return Response(json.dumps(body, separators=(",", ":")), status, headers, media_type="application/json")


async def drop_connection(request: Request, reset: bool) -> Response:
    """Close the request's connection without an answer (with a TCP RST when ``reset``)."""
    transport = request.scope.get(TRANSPORT)
    if transport is None:
        raise RuntimeError("the server does not expose its transport: reset and hang faults need uvicorn")
    sock = transport.get_extra_info("socket")
    if reset and sock is not None:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    transport.abort()
    await asyncio.sleep(0)  # the server sees the connection lost, and ignores the answer below
    return Response(status_code=500)


async def read_body(request: Request, limit: int) -> bytes:
    """The request body, refused with 413 past ``limit`` (a moderately larger one is drained first)."""
    declared = request.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > limit:
        if int(declared) <= 4 * limit:  # let the client finish sending, so that it reads the 413
            async for _ in request.stream():
                pass
        raise HttpError(413, f"payload too large: {declared} bytes > limit {limit}", close=True)
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise HttpError(413, f"payload too large: over the limit of {limit} bytes", close=True)
        chunks.append(chunk)
    return b"".join(chunks)


def parse_json(body: bytes) -> Any:
    """The JSON value of a body; None when empty; HttpError 400 when not JSON."""
    if not body.strip():
        return None
    try:
        return json.loads(body)
    except ValueError as exc:
        raise HttpError(400, "body is not valid JSON") from exc


def wait_ms(query: dict[str, str], default: int) -> int:
    """``?wait=`` in milliseconds, within 0..MAX_WAIT_MS."""
    raw = query.get("wait", str(default))
    try:
        return max(0, min(MAX_WAIT_MS, int(raw)))
    except ValueError as exc:
        raise HttpError(400, f"wait must be an integer number of milliseconds, got {raw!r}") from exc


def policy_of(body: dict[str, Any]) -> dict[str, float]:
    """``policy.executionTimeout`` and ``policy.ttl``, checked."""
    policy = body.get("policy") or {}
    if not isinstance(policy, dict):
        raise HttpError(400, "policy must be an object")
    out: dict[str, float] = {}
    for key in ("executionTimeout", "ttl"):
        value = policy.get(key)
        if value is None:
            continue
        if isinstance(value, bool) or not isinstance(value, int | float) or value <= 0:
            raise HttpError(400, f"policy.{key} must be a positive number of milliseconds")
        out[key] = float(value)
    return out


Handler = Callable[[Endpoint, dict[str, str], Any, str], Awaitable[Response]]


async def _submit(endpoint: Endpoint, query: dict[str, str], payload: Any, sync: bool) -> Response:
    if not isinstance(payload, dict) or "input" not in payload:
        raise HttpError(400, 'body must be a JSON object with an "input" key')
    wait_s = wait_ms(query, RUNSYNC_DEFAULT_WAIT_MS) / 1000 if sync else 0.0
    try:
        job = endpoint.submit(payload["input"], policy_of(payload), sync, payload.get("policy"))
    except QueueFull as exc:
        raise HttpError(429, str(exc)) from exc
    if not sync:
        return json_response(200, {"id": job.id, "status": job.status})
    snapshot = await endpoint.wait_change(job.id, wait_s, until_terminal=True)
    if snapshot["status"] in TERMINAL:
        return json_response(200, snapshot)
    return json_response(200, {"id": job.id, "status": snapshot["status"]})


async def _run(endpoint: Endpoint, query: dict[str, str], payload: Any, _job_id: str) -> Response:
    return await _submit(endpoint, query, payload, sync=False)


async def _runsync(endpoint: Endpoint, query: dict[str, str], payload: Any, _job_id: str) -> Response:
    return await _submit(endpoint, query, payload, sync=True)


async def _snapshot(endpoint: Endpoint, query: dict[str, str], job_id: str) -> dict[str, Any]:
    wait = wait_ms(query, 0) if endpoint.supports_wait else 0
    if wait:
        return await endpoint.wait_change(job_id, wait / 1000)
    return endpoint.get(job_id).to_status()


async def _status(endpoint: Endpoint, query: dict[str, str], _payload: Any, job_id: str) -> Response:
    return json_response(200, await _snapshot(endpoint, query, job_id))


async def _stream(endpoint: Endpoint, query: dict[str, str], _payload: Any, job_id: str) -> Response:
    snapshot = await _snapshot(endpoint, query, job_id)
    chunks = [{"output": snapshot["output"]}] if "output" in snapshot else []
    return json_response(200, {"status": snapshot["status"], "stream": chunks})


async def _cancel(endpoint: Endpoint, _query: dict[str, str], _payload: Any, job_id: str) -> Response:
    return json_response(200, endpoint.cancel(job_id))


async def _retry(endpoint: Endpoint, _query: dict[str, str], _payload: Any, job_id: str) -> Response:
    try:
        return json_response(200, endpoint.retry(job_id))
    except NotRetryable as exc:
        raise HttpError(400, str(exc)) from exc
    except QueueFull as exc:
        raise HttpError(429, str(exc)) from exc


async def _health(endpoint: Endpoint, _query: dict[str, str], _payload: Any, _job_id: str) -> Response:
    status, body = endpoint.health()
    return json_response(status, body)


async def _purge(endpoint: Endpoint, _query: dict[str, str], _payload: Any, _job_id: str) -> Response:
    return json_response(200, {"removed": endpoint.purge_queue(), "status": "completed"})


class ScriptRequest(BaseModel):
    """``POST /admin/script``: one scripted fault for one route, as ``Endpoint.script`` takes it."""

    model_config = ConfigDict(extra="forbid")

    route: Route
    fault: str = Field(pattern="^(http|non_json|json|reset|hang|delay)$")
    status: int = Field(default=500, ge=100, le=599)
    body: Any = None
    retry_after: str | None = None
    seconds: float = Field(default=30.0, ge=0)
    times: int | None = Field(default=1, ge=1)

    def to_fault(self) -> Fault:
        """The Fault this request describes."""
        if self.fault == "http":
            return Fault.http(self.status, self.body, self.retry_after)
        if self.fault == "non_json":
            return Fault.non_json(self.status)
        if self.fault == "json":
            return Fault.json_body(self.body, self.status)
        if self.fault == "reset":
            return Fault.reset()
        if self.fault == "hang":
            return Fault.hang(self.seconds)
        return Fault.delay(self.seconds)


def build_app(registry: Registry) -> Connections:
    """The ASGI application serving ``registry``."""
    app = FastAPI(title="RunPod emulator", docs_url=None, redoc_url=None, openapi_url=None)

    def authorized(request: Request) -> bool:
        header = request.headers.get("authorization", "")
        token = header[7:].strip() if header.lower().startswith("bearer ") else header.strip()
        return bool(token) and hmac.compare_digest(token.encode(), registry.api_key.encode())

    def error(request: Request, exc: HttpError) -> Response:
        log.event("http.error", method=request.method, path=request.url.path, status=exc.status, error=str(exc))
        return json_response(exc.status, {"error": str(exc)}, {"Connection": "close"} if exc.close else None)

    async def api(request: Request, endpoint_id: str, route: str, job_id: str, handler: Handler) -> Response:
        query = dict(request.query_params)
        try:
            body = await read_body(request, RUNSYNC_PAYLOAD_LIMIT if route == "runsync" else RUN_PAYLOAD_LIMIT)
        except HttpError as exc:
            registry.record(request.method, request.url.path, route, endpoint_id, job_id, query,
                            request.headers.get("authorization", ""), None)
            return error(request, exc)
        try:
            payload: Any = json.loads(body) if body.strip() else None
        except ValueError:
            payload = None
        registry.record(request.method, request.url.path, route, endpoint_id, job_id, query,
                        request.headers.get("authorization", ""), payload)
        try:
            if not authorized(request):
                raise HttpError(401, "Unauthorized: missing or wrong API key")
            endpoint = registry.endpoints.get(endpoint_id)
            if endpoint is None:
                raise HttpError(404, f"endpoint {endpoint_id!r} not found")
            fault = endpoint.next_fault(route)
            if fault is not None and fault.kind == "delay":
                await asyncio.sleep(fault.seconds)
            elif fault is not None and fault.kind in ("reset", "hang"):
                if fault.kind == "hang":
                    await asyncio.sleep(fault.seconds)
                return await drop_connection(request, reset=fault.kind == "reset")
            elif fault is not None:
                return Response(fault.body, fault.status, fault.headers, media_type=fault.content_type)
            latency_ms, action = endpoint.faults.for_request(route)
            if latency_ms:
                await asyncio.sleep(latency_ms / 1000)
            if action == "error":
                raise HttpError(endpoint.faults.get().error_status, "injected error (fault injection)")
            if action == "malformed":
                return Response(b'{"id": "malformed-by-fault-injection", "status": ', 200,
                                media_type="application/json")
            if route in ("run", "runsync"):
                payload = parse_json(body)
            return await handler(endpoint, query, payload, job_id)
        except JobNotFound:
            return error(request, HttpError(404, f"job {job_id} not found (unknown, purged or past its retention)"))
        except HttpError as exc:
            return error(request, exc)

    endpoint_routes: dict[str, tuple[Handler, list[str]]] = {
        "run": (_run, ["POST"]), "runsync": (_runsync, ["POST"]), "health": (_health, ["GET"]),
        "purge-queue": (_purge, ["POST"]),
    }
    job_routes: dict[str, tuple[Handler, list[str]]] = {
        "status": (_status, ["GET", "POST"]), "stream": (_stream, ["GET", "POST"]),
        "cancel": (_cancel, ["POST"]), "retry": (_retry, ["POST"]),
    }
    assert set(endpoint_routes) | set(job_routes) == set(ROUTES)

    # Plain Starlette routes (no FastAPI parameter injection): a third of the CPU per request.
    def serve(route: str, handler: Handler) -> Callable[[Request], Awaitable[Response]]:
        async def serve(request: Request) -> Response:
            params = request.path_params
            return await api(request, params["endpoint_id"], route, params.get("job_id", ""), handler)
        return serve

    for route, (handler, methods) in endpoint_routes.items():
        app.add_route(f"/v2/{{endpoint_id}}/{route}", serve(route, handler), methods=methods)
    for route, (handler, methods) in job_routes.items():
        app.add_route(f"/v2/{{endpoint_id}}/{route}/{{job_id}}", serve(route, handler), methods=methods)

    @app.get("/files/{name}")
    async def files(request: Request, name: str) -> Response:
        registry.record("GET", request.url.path, "files", "", name, dict(request.query_params),
                        request.headers.get("authorization", ""), None)
        entry = registry.files.get(name)
        if entry is None:
            return json_response(404, {"error": "no such file"})
        return Response(entry[0], 200, media_type=entry[1])

    def admin_endpoint(request: Request) -> Endpoint:
        if not authorized(request):
            raise HttpError(401, "Unauthorized: missing or wrong API key")
        name = request.query_params.get("endpoint")
        if name is None and len(registry.endpoints) == 1:
            return next(iter(registry.endpoints.values()))
        if name is None or name not in registry.endpoints:
            raise HttpError(404, f"name one of the endpoints with ?endpoint=: {', '.join(registry.endpoints)}")
        return registry.endpoints[name]

    @app.api_route("/admin/faults", methods=["GET", "POST", "DELETE"])
    async def admin_faults(request: Request) -> Response:
        try:
            endpoint = admin_endpoint(request)
            if request.method == "POST":
                try:
                    endpoint.faults.set(parse_faults(parse_json(await read_body(request, RUN_PAYLOAD_LIMIT)) or {},
                                                     endpoint.faults.get()))
                except ValueError as exc:
                    raise HttpError(400, str(exc)) from exc
                log.event("faults.changed", endpoint=endpoint.id, **endpoint.faults.get().model_dump())
            elif request.method == "DELETE":
                endpoint.faults.set(Faults())
                log.event("faults.cleared", endpoint=endpoint.id)
        except HttpError as exc:
            return error(request, exc)
        return json_response(200, endpoint.faults.get().model_dump())

    @app.api_route("/admin/script", methods=["POST", "DELETE"])
    async def admin_script(request: Request) -> Response:
        try:
            endpoint = admin_endpoint(request)
            if request.method == "DELETE":
                endpoint.clear(request.query_params.get("route"))
                return json_response(200, {"cleared": True})
            try:
                script = ScriptRequest.model_validate(parse_json(await read_body(request, RUN_PAYLOAD_LIMIT)))
            except ValidationError as exc:
                raise HttpError(400, f"bad script: {describe(exc)}") from None
        except HttpError as exc:
            return error(request, exc)
        endpoint.script(script.route, script.to_fault(), script.times)
        log.event("fault.scripted", endpoint=endpoint.id, route=script.route, fault=script.fault, times=script.times)
        return json_response(200, script.model_dump())

    @app.get("/admin/requests")
    async def admin_requests(request: Request) -> Response:
        if not authorized(request):
            return error(request, HttpError(401, "Unauthorized: missing or wrong API key"))
        query = request.query_params
        try:
            count = registry.count(query.get("route"), query.get("endpoint"), query.get("job_id"))
        except ValueError as exc:
            return error(request, HttpError(400, str(exc)))
        return json_response(200, {"count": count})

    @app.exception_handler(HTTPException)
    async def http_exception(request: Request, exc: HTTPException) -> Response:
        return json_response(exc.status_code, {"error": str(exc.detail)}, getattr(exc, "headers", None))

    return Connections(app)
