"""The emulator's server: uvicorn in a thread of its own, with the control API of a Registry."""

from __future__ import annotations

import asyncio
import socket
import threading
from typing import Any

import uvicorn

from services.stack.runpod_emulator.app import build_app
from services.stack.runpod_emulator.registry import Registry

START_TIMEOUT_S = 10.0


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
        self._server: uvicorn.Server | None = None
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
        # h11 everywhere (httptools is only in the worker's environment): one behaviour in both.
        # Long keep-alive: a client reusing a connection the server just closed would see its
        # /run fail with an unknown outcome.
        config = uvicorn.Config(build_app(self), http="h11", lifespan="off", log_config=None, log_level="warning",
                                access_log=False, proxy_headers=False, server_header=False, backlog=2048,
                                timeout_keep_alive=300, timeout_graceful_shutdown=1)
        self._server = uvicorn.Server(config)
        ready = threading.Event()
        self.loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._serve, args=(self._server, sock, ready),
                                        name="runpod-emulator", daemon=True)
        self._thread.start()
        if not ready.wait(START_TIMEOUT_S) or self._failure is not None:
            self.stop()
            raise RuntimeError(f"the RunPod emulator did not start: {self._failure!r}")
        return self

    def _serve(self, server: uvicorn.Server, sock: socket.socket, ready: threading.Event) -> None:
        loop = self.loop
        assert loop is not None
        asyncio.set_event_loop(loop)
        try:
            loop.run_until_complete(self._main(server, sock, ready))
        except BaseException as exc:  # reported by start() or stop()
            self._failure = exc
            ready.set()
        finally:
            loop.close()

    async def _main(self, server: uvicorn.Server, sock: socket.socket, ready: threading.Event) -> None:
        for endpoint in list(self.endpoints.values()):
            await endpoint.runner.start()
        serving = asyncio.get_running_loop().create_task(server.serve(sockets=[sock]))
        while not server.started and not serving.done():  # noqa: ASYNC110 (uvicorn offers no started event)
            await asyncio.sleep(0.005)
        ready.set()
        try:
            await serving
        finally:
            for endpoint in list(self.endpoints.values()):
                await endpoint.runner.stop()

    def call(self, function: Any, *args: Any) -> Any:
        """Run ``function(*args)`` on the emulator's loop (a coroutine function is awaited) and return its result."""
        assert self.loop is not None

        async def call() -> Any:
            result = function(*args)
            return await result if asyncio.iscoroutine(result) else result

        return asyncio.run_coroutine_threadsafe(call(), self.loop).result(30)

    @property
    def running(self) -> bool:
        """Whether the server thread is alive."""
        return self._thread is not None and self._thread.is_alive()

    def stop(self) -> None:
        """Stop serving, stop every runner (ending their processes) and close every connection."""
        server, thread = self._server, self._thread
        if server is None or thread is None:
            return
        if self.loop is not None and not self.loop.is_closed():
            self.loop.call_soon_threadsafe(setattr, server, "should_exit", True)
        thread.join(30)
        self._server = self._thread = None

    def __enter__(self) -> RunPodEmulator:
        return self.start()

    def __exit__(self, *_exc: object) -> None:
        self.stop()
