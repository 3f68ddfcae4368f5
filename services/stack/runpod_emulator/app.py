"""The emulator's ASGI application: the queue API, the admin API and served files, on FastAPI."""

from __future__ import annotations

from fastapi import FastAPI, Request, Response
from starlette.exceptions import HTTPException

from services.stack.runpod_emulator.admin import add_admin_routes
from services.stack.runpod_emulator.metrics import exposition
from services.stack.runpod_emulator.queue_api import add_queue_routes
from services.stack.runpod_emulator.registry import Registry
from services.stack.runpod_emulator.web import Connections, HttpError, error_response, json_response


def build_app(registry: Registry) -> Connections:
    """The ASGI application serving ``registry``."""
    app = FastAPI(title="RunPod emulator", docs_url=None, redoc_url=None, openapi_url=None)
    add_queue_routes(app, registry)
    add_admin_routes(app, registry)
    scrape = exposition(lambda: registry.endpoints)

    @app.get("/metrics")
    async def metrics() -> Response:
        # No key, like a Prometheus scrape: counts and queue lengths only.
        status, body, content_type = scrape()
        return Response(body, status, media_type=content_type)

    @app.get("/files/{name}")
    async def files(request: Request, name: str) -> Response:
        registry.record("GET", request.url.path, "files", "", name, dict(request.query_params),
                        request.headers.get("authorization", ""), None)
        entry = registry.files.get(name)
        if entry is None:
            return json_response(404, {"error": "no such file"})
        return Response(entry[0], 200, media_type=entry[1])

    @app.exception_handler(HttpError)
    async def http_error(request: Request, exc: HttpError) -> Response:
        return error_response(request, exc)

    @app.exception_handler(HTTPException)
    async def starlette_error(request: Request, exc: HTTPException) -> Response:
        return json_response(exc.status_code, {"error": str(exc.detail)}, getattr(exc, "headers", None))

    return Connections(app)
