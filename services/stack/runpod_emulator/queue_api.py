"""RunPod's queue API: ``/v2/{endpoint}/run``, ``/runsync``, ``/status``, ``/stream``, ``/cancel``, ``/retry``,
``/health``, ``/purge-queue``.

Every request goes through one pipeline: it is recorded, its key checked, its
endpoint found, then a scripted fault or the live fault settings may answer
instead, and only then does the route itself run.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Awaitable, Callable
from typing import Any

from fastapi import FastAPI, Request, Response

from services.stack.runpod_emulator.endpoint import Endpoint, JobNotFound, NotRetryable, QueueFull
from services.stack.runpod_emulator.faults import ROUTES
from services.stack.runpod_emulator.jobs import TERMINAL
from services.stack.runpod_emulator.registry import Registry
from services.stack.runpod_emulator.web import (
    HttpError,
    check_key,
    drop_connection,
    error_response,
    json_response,
    parse_json,
    read_body,
)

RUN_PAYLOAD_LIMIT = 10 * 1024 * 1024  # RunPod's documented /run limit
RUNSYNC_PAYLOAD_LIMIT = 20 * 1024 * 1024  # and /runsync's
MAX_WAIT_MS = 300_000
RUNSYNC_DEFAULT_WAIT_MS = 90_000
MALFORMED = b'{"id": "malformed-by-fault-injection", "status": '

Handler = Callable[[Endpoint, dict[str, str], Any, str], Awaitable[Response]]


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


ENDPOINT_ROUTES: dict[str, tuple[Handler, list[str]]] = {
    "run": (_run, ["POST"]), "runsync": (_runsync, ["POST"]), "health": (_health, ["GET"]),
    "purge-queue": (_purge, ["POST"]),
}
JOB_ROUTES: dict[str, tuple[Handler, list[str]]] = {
    "status": (_status, ["GET", "POST"]), "stream": (_stream, ["GET", "POST"]),
    "cancel": (_cancel, ["POST"]), "retry": (_retry, ["POST"]),
}
assert set(ENDPOINT_ROUTES) | set(JOB_ROUTES) == set(ROUTES)


async def injected_answer(request: Request, endpoint: Endpoint, route: str) -> Response | None:
    """The answer a scripted fault or the live fault settings give instead of the route's (None: no fault)."""
    fault = endpoint.next_fault(route)
    if fault is not None:
        if fault.kind in ("delay", "hang"):
            await asyncio.sleep(fault.seconds)
        if fault.kind in ("reset", "hang"):
            return await drop_connection(request, reset=fault.kind == "reset")
        if fault.kind == "http":
            return Response(fault.body, fault.status, fault.headers, media_type=fault.content_type)
    latency_ms, action = endpoint.faults.for_request(route)
    if latency_ms:
        await asyncio.sleep(latency_ms / 1000)
    if action == "error":
        raise HttpError(endpoint.faults.get().error_status, "injected error (fault injection)")
    if action == "malformed":
        return Response(MALFORMED, 200, media_type="application/json")
    return None


def add_queue_routes(app: FastAPI, registry: Registry) -> None:
    """Serve every endpoint of ``registry`` under ``/v2/{endpoint_id}/``."""

    async def api(request: Request, route: str, handler: Handler) -> Response:
        endpoint_id, job_id = request.path_params["endpoint_id"], request.path_params.get("job_id", "")
        query = dict(request.query_params)
        record = (request.method, request.url.path, route, endpoint_id, job_id, query,
                  request.headers.get("authorization", ""))
        try:
            body = await read_body(request, RUNSYNC_PAYLOAD_LIMIT if route == "runsync" else RUN_PAYLOAD_LIMIT)
        except HttpError:
            registry.record(*record, None)
            raise
        try:
            payload: Any = json.loads(body) if body.strip() else None
        except ValueError:
            payload = None
        registry.record(*record, payload)
        check_key(request, registry.api_key)
        endpoint = registry.endpoints.get(endpoint_id)
        if endpoint is None:
            raise HttpError(404, f"endpoint {endpoint_id!r} not found")
        injected = await injected_answer(request, endpoint, route)
        if injected is not None:
            return injected
        try:
            return await handler(endpoint, query, parse_json(body) if route in ("run", "runsync") else payload,
                                 job_id)
        except JobNotFound:
            return error_response(request, HttpError(
                404, f"job {job_id} not found (unknown, purged or past its retention)"))

    # Plain Starlette routes (no FastAPI parameter injection): a third of the CPU per request.
    def serve(route: str, handler: Handler) -> Callable[[Request], Awaitable[Response]]:
        async def serve(request: Request) -> Response:
            return await api(request, route, handler)
        return serve

    for route, (handler, methods) in ENDPOINT_ROUTES.items():
        app.add_route(f"/v2/{{endpoint_id}}/{route}", serve(route, handler), methods=methods)
    for route, (handler, methods) in JOB_ROUTES.items():
        app.add_route(f"/v2/{{endpoint_id}}/{route}/{{job_id}}", serve(route, handler), methods=methods)
