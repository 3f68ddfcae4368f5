"""A recording, fault-injecting HTTP proxy in front of the local S3 server, on loopback in the test's loop.

Each request is recorded as it arrived (method, path, headers, body), then
either answered by the next scripted fault (an S3 error status, no answer at
all, a reset connection) or forwarded to the real S3 server with its
headers, so that the store behind it answers as a store does.
"""

from __future__ import annotations

import asyncio
from collections import deque
from dataclasses import dataclass, field

import aiohttp
from aiohttp import web
from multidict import CIMultiDict

_HOP_BY_HOP = {"host", "connection", "transfer-encoding", "content-length", "keep-alive"}


@dataclass(frozen=True)
class Recorded:
    """One request as the proxy received it."""

    method: str
    path: str
    headers: CIMultiDict[str]
    body: bytes


@dataclass(frozen=True)
class Status:
    """Answer with this status and an S3 error document (no body for HEAD)."""

    status: int
    code: str


@dataclass(frozen=True)
class Hang:
    """Read the request and never answer."""


@dataclass(frozen=True)
class Reset:
    """Read the request and drop the connection."""


Fault = Status | Hang | Reset


@dataclass
class S3Proxy:
    """``url`` is the endpoint to give the swapper; ``faults`` are used up one per request, in order."""

    upstream: str
    requests: list[Recorded] = field(default_factory=list)
    faults: deque[Fault] = field(default_factory=deque)
    url: str = ""
    _runner: web.AppRunner | None = None
    _session: aiohttp.ClientSession | None = None
    _hanging: set[asyncio.Future[None]] = field(default_factory=set)

    async def start(self) -> S3Proxy:
        """Listens on a free loopback port."""
        app = web.Application(client_max_size=64 * 1024 * 1024)
        app.router.add_route("*", "/{tail:.*}", self._handle)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        port = self._runner.addresses[0][1]
        self.url = f"http://127.0.0.1:{port}"
        self._session = aiohttp.ClientSession(auto_decompress=False)
        return self

    async def stop(self) -> None:
        """Releases hanging requests, stops listening, closes the upstream connections."""
        for waiter in self._hanging:
            waiter.cancel()
        if self._runner is not None:
            await self._runner.cleanup()
        if self._session is not None:
            await self._session.close()

    def of(self, method: str) -> list[Recorded]:
        """The recorded requests with this method."""
        return [request for request in self.requests if request.method == method]

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        body = await request.read()
        self.requests.append(Recorded(request.method, request.raw_path, CIMultiDict(request.headers), body))
        fault = self.faults.popleft() if self.faults else None
        if isinstance(fault, Status):
            document = (f"<?xml version='1.0' encoding='UTF-8'?><Error><Code>{fault.code}</Code>"
                        f"<Message>injected</Message></Error>")
            return web.Response(status=fault.status, body=None if request.method == "HEAD" else document.encode(),
                                content_type="application/xml")
        if isinstance(fault, Hang):
            waiter: asyncio.Future[None] = asyncio.get_running_loop().create_future()
            self._hanging.add(waiter)
            await waiter
        if isinstance(fault, Reset):
            assert request.transport is not None
            request.transport.abort()
            return web.Response(status=500)
        assert self._session is not None
        headers = {name: value for name, value in request.headers.items() if name.lower() not in _HOP_BY_HOP}
        async with self._session.request(request.method, self.upstream + request.raw_path, headers=headers,
                                         data=body or None, allow_redirects=False) as answer:
            data = await answer.read()
            out = {name: value for name, value in answer.headers.items() if name.lower() not in _HOP_BY_HOP}
            response = web.Response(status=answer.status, headers=out, body=data if request.method != "HEAD" else None)
            if request.method == "HEAD" and answer.content_length is not None:
                response.headers["Content-Length"] = str(answer.content_length)
            return response
