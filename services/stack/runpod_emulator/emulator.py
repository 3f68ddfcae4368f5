"""The emulator's server: uvicorn in a thread of its own, with the control API of a Registry."""

from __future__ import annotations

import asyncio
import socket
import threading

import uvicorn

from services.stack.runpod_emulator.app import build_app
from services.stack.runpod_emulator.endpoint import Endpoint, Limits, Runner
from services.stack.runpod_emulator.registry import Registry
from services.stack.runpod_emulator.web import Connections

START_TIMEOUT_S = 10.0


class _Server(uvicorn.Server):
    """uvicorn's server, started and stopped at once.

    uvicorn checks for exit every 0.1 s and then waits for open connections; tests start and stop
    an emulator per test, and long-polls and hang faults hold connections open. This one waits on
    an event, then drops every connection and ends the requests in flight.
    """

    def __init__(self, config: uvicorn.Config, connections: Connections, ready: threading.Event) -> None:
        super().__init__(config)
        self.connections = connections
        self.ready = ready
        self.stopping = asyncio.Event()

    async def startup(self, sockets: list[socket.socket] | None = None) -> None:
        await super().startup(sockets)
        self.ready.set()

    async def main_loop(self) -> None:
        await self.stopping.wait()

    async def shutdown(self, sockets: list[socket.socket] | None = None) -> None:
        for listener in self.servers:
            listener.close()
        self.connections.closing = True
        for connection in list(self.server_state.connections):
            connection.transport.abort()
        requests = list(self.server_state.tasks)
        for request in requests:
            request.cancel()
        await asyncio.gather(*requests, return_exceptions=True)


class RunPodEmulator(Registry):
    """RunPod's queue API on loopback, served from a thread of this process.

        emulator = RunPodEmulator(api_key="k").start()
        ep = emulator.endpoint("ep1")                  # scripted jobs
        ep.plan = JobPlan(run_s=0.2)
        ep.script("status", Fault.http(503), times=2)
        ...
        assert emulator.count("cancel", endpoint="ep1") == 1
        emulator.stop()
    """

    def __init__(self, api_key: str = "emulator-key", host: str = "127.0.0.1", port: int = 0,
                 record_requests: bool = True) -> None:
        super().__init__(api_key, host, record_requests)
        self.requested_port = port
        self.loop: asyncio.AbstractEventLoop | None = None
        self._server: _Server | None = None
        self._thread: threading.Thread | None = None
        self._failure: BaseException | None = None

    def start(self) -> RunPodEmulator:
        """Bind the port, start every endpoint's runner and serve, in a thread; returns self."""
        # IPPROTO_TCP explicitly: asyncio sets TCP_NODELAY only on sockets that name it, and
        # without it every answer (headers, then body) waits ~40 ms for the client's delayed ACK.
        sock = socket.socket(socket.AF_INET6 if ":" in self.host else socket.AF_INET, socket.SOCK_STREAM,
                             socket.IPPROTO_TCP)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((self.host, self.requested_port))
        self.port = int(sock.getsockname()[1])
        app = build_app(self)
        # h11 everywhere (httptools is only in the worker's environment): one behaviour in both.
        # Long keep-alive: a client reusing a connection the server just closed would see its
        # /run fail with an unknown outcome.
        config = uvicorn.Config(app, http="h11", lifespan="off", log_config=None, log_level="warning",
                                access_log=False, proxy_headers=False, server_header=False, backlog=2048,
                                timeout_keep_alive=300)
        ready = threading.Event()
        self._server = _Server(config, app, ready)
        self.loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._serve, args=(self._server, sock),
                                        name="runpod-emulator", daemon=True)
        self._thread.start()
        ready.wait(START_TIMEOUT_S)
        if not self._server.started:
            self.stop()
            raise RuntimeError(f"the RunPod emulator did not start: {self._failure!r}")
        return self

    def _serve(self, server: _Server, sock: socket.socket) -> None:
        loop = self.loop
        assert loop is not None
        asyncio.set_event_loop(loop)
        try:
            loop.run_until_complete(self._main(server, sock))
        except BaseException as exc:  # start() reports it
            self._failure = exc
        finally:
            server.ready.set()
            loop.close()

    async def _main(self, server: _Server, sock: socket.socket) -> None:
        for endpoint in list(self.endpoints.values()):
            await endpoint.runner.start()
        try:
            await server.serve(sockets=[sock])
        finally:
            for endpoint in list(self.endpoints.values()):
                await endpoint.runner.stop()

    def endpoint(self, endpoint_id: str, runner: Runner | None = None, limits: Limits | None = None) -> Endpoint:
        """The endpoint with this id, created on first use; a runner added while serving is started at once."""
        known = endpoint_id in self.endpoints
        endpoint = super().endpoint(endpoint_id, runner, limits)
        if not known and self.running and self.loop is not None:
            asyncio.run_coroutine_threadsafe(endpoint.runner.start(), self.loop).result(START_TIMEOUT_S)
        return endpoint

    @property
    def running(self) -> bool:
        """Whether the server thread is alive."""
        return self._thread is not None and self._thread.is_alive()

    def stop(self) -> None:
        """Stop serving, drop every connection and stop every runner (ending their processes)."""
        server, thread, loop = self._server, self._thread, self.loop
        if server is None or thread is None or loop is None:
            return
        if not loop.is_closed():
            loop.call_soon_threadsafe(server.stopping.set)
        thread.join(30)
        self._server = self._thread = None

    def __enter__(self) -> RunPodEmulator:
        return self.start()

    def __exit__(self, *_exc: object) -> None:
        self.stop()
