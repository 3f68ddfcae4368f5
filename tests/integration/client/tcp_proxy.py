"""A loopback TCP proxy in front of a gateway, that a test can make lose replies and reset connections.

It stands for what sits between a client and a gateway in a deployment (a
load balancer, a NAT, a network): ``hold_replies()`` stops passing the
gateway's bytes to the client (the request still arrives and is served, the
answer is lost on the way back), and ``reset()`` breaks every open
connection with a TCP RST on the client's side, as a crashed middlebox does.
New connections after ``reset()`` pass traffic normally.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import struct

from tests.redis_server import free_port


class TcpProxy:
    """Forwards ``127.0.0.1:<port>`` to ``upstream`` (``host:port``)."""

    def __init__(self, upstream: str) -> None:
        host, _, port = upstream.rpartition(":")
        self._upstream = (host, int(port))
        self.port = free_port()
        self.address = f"127.0.0.1:{self.port}"
        self.connections = 0
        self._holding = False
        self._open: set[tuple[asyncio.StreamWriter, asyncio.StreamWriter]] = set()
        self._tasks: set[asyncio.Task[None]] = set()
        self._server: asyncio.Server | None = None

    async def start(self) -> TcpProxy:
        """Starts listening."""
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", self.port)
        return self

    def hold_replies(self) -> None:
        """From now on the gateway's bytes are dropped instead of reaching the client."""
        self._holding = True

    def reset(self) -> None:
        """Resets every open connection (RST to the client, close to the gateway); new ones pass normally."""
        self._holding = False
        for client, upstream in list(self._open):
            sock = client.get_extra_info("socket")
            if sock is not None:
                # Linger 0: close() sends RST instead of FIN, as a crashed middlebox would.
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            client.transport.abort()
            upstream.transport.abort()
        self._open.clear()

    async def close(self) -> None:
        """Stops listening and drops every connection."""
        self.reset()
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        try:
            up_reader, up_writer = await asyncio.open_connection(*self._upstream)
        except OSError:
            writer.transport.abort()
            return
        pair = (writer, up_writer)
        self._open.add(pair)
        pumps = [asyncio.ensure_future(self._pump(reader, up_writer, replies=False)),
                 asyncio.ensure_future(self._pump(up_reader, writer, replies=True))]
        self._tasks.update(pumps)
        try:
            await asyncio.wait(pumps, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for pump in pumps:
                pump.cancel()
                self._tasks.discard(pump)
            self._open.discard(pair)
            for side in pair:
                side.transport.abort()

    async def _pump(self, source: asyncio.StreamReader, sink: asyncio.StreamWriter, replies: bool) -> None:
        with contextlib.suppress(ConnectionError, OSError):
            while data := await source.read(65536):
                if replies and self._holding:
                    continue
                sink.write(data)
                await sink.drain()
