"""The emulator's own HTTP API, for use from another process (the local stack, e2e tests).

``/admin/faults`` (live fault settings), ``/admin/script`` (scripted answers per route) and
``/admin/requests`` (request counts); ``?endpoint=ID`` picks the endpoint when there are several.
"""

from __future__ import annotations

from typing import Any

from fastapi import FastAPI, Request, Response
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from services.stack.runpod_emulator import log
from services.stack.runpod_emulator.endpoint import Endpoint
from services.stack.runpod_emulator.faults import Fault, Faults, Route, describe, parse_faults
from services.stack.runpod_emulator.registry import Registry
from services.stack.runpod_emulator.web import HttpError, check_key, json_response, parse_json, read_body

BODY_LIMIT = 1024 * 1024


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


def add_admin_routes(app: FastAPI, registry: Registry) -> None:
    """Serve the admin API of ``registry``'s endpoints (the same key as the queue API)."""

    def chosen_endpoint(request: Request) -> Endpoint:
        check_key(request, registry.api_key)
        name = request.query_params.get("endpoint")
        if name is None and len(registry.endpoints) == 1:
            return next(iter(registry.endpoints.values()))
        if name is None or name not in registry.endpoints:
            raise HttpError(404, f"name one of the endpoints with ?endpoint=: {', '.join(registry.endpoints)}")
        return registry.endpoints[name]

    @app.api_route("/admin/faults", methods=["GET", "POST", "DELETE"])
    async def faults(request: Request) -> Response:
        endpoint = chosen_endpoint(request)
        if request.method == "POST":
            changes = parse_json(await read_body(request, BODY_LIMIT)) or {}
            try:
                endpoint.faults.set(parse_faults(changes, endpoint.faults.get()))
            except ValueError as exc:
                raise HttpError(400, str(exc)) from exc
            log.event("faults.changed", endpoint=endpoint.id, **endpoint.faults.get().model_dump())
        elif request.method == "DELETE":
            endpoint.faults.set(Faults())
            log.event("faults.cleared", endpoint=endpoint.id)
        return json_response(200, endpoint.faults.get().model_dump())

    @app.api_route("/admin/script", methods=["POST", "DELETE"])
    async def script(request: Request) -> Response:
        endpoint = chosen_endpoint(request)
        if request.method == "DELETE":
            endpoint.clear(request.query_params.get("route"))
            return json_response(200, {"cleared": True})
        try:
            scripted = ScriptRequest.model_validate(parse_json(await read_body(request, BODY_LIMIT)))
        except ValidationError as exc:
            raise HttpError(400, f"bad script: {describe(exc)}") from None
        endpoint.script(scripted.route, scripted.to_fault(), scripted.times)
        log.event("fault.scripted", endpoint=endpoint.id, route=scripted.route, fault=scripted.fault,
                  times=scripted.times)
        return json_response(200, scripted.model_dump())

    @app.get("/admin/requests")
    async def requests(request: Request) -> Response:
        check_key(request, registry.api_key)
        query = request.query_params
        try:
            count = registry.count(query.get("route"), query.get("endpoint"), query.get("job_id"))
        except ValueError as exc:
            raise HttpError(400, str(exc)) from exc
        return json_response(200, {"count": count})
