"""HTTP plumbing shared by the queue API and the admin API: errors, bodies, keys, dropped connections."""

from __future__ import annotations

import asyncio
import hmac
import json
import socket
import struct
from typing import Any

from fastapi import Request, Response
from starlette.types import ASGIApp, Receive, Scope, Send

from services.stack.runpod_emulator import log

TRANSPORT = "runpod_emulator.transport"


class HttpError(Exception):
    """An API error, answered as ``{"error": message}`` (``close``: and the connection closed)."""

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


def error_response(request: Request, exc: HttpError) -> Response:
    """The answer to an HttpError, logged."""
    log.event("http.error", method=request.method, path=request.url.path, status=exc.status, error=str(exc))
    return json_response(exc.status, {"error": str(exc)}, {"Connection": "close"} if exc.close else None)


def check_key(request: Request, api_key: str) -> None:
    """HttpError 401 unless the request carries the key (``Bearer KEY``, or the bare key, as RunPod accepts)."""
    header = request.headers.get("authorization", "")
    token = header[7:].strip() if header.lower().startswith("bearer ") else header.strip()
    if not (token and hmac.compare_digest(token.encode(), api_key.encode())):
        raise HttpError(401, "Unauthorized: missing or wrong API key")


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
