"""An S3-compatible server on loopback for the local stack, the tests and the benchmarks: moto's S3 backend.

It is moto's S3 app (what ``ThreadedMotoServer`` serves) behind a small
threaded HTTP/1.1 server instead of werkzeug's development server: moto's
multi-service dispatcher scans its module directory on every request to find
the service (~3 ms), and werkzeug closes every connection and then waits up
to 10 ms for stray request bytes, so each request also cost a new TCP
connection. Here the S3 app is called directly, connections are kept alive,
and nothing is logged per request. Objects live in memory and vanish when the
process ends. moto does not enforce presigned-URL expiry.

It also counts requests by method and key prefix (``GET /_local/stats``)
so that benchmarks can measure what the swapper really sent.

Standalone: ``python -m services.stack.s3_server --listen 127.0.0.1:9000``.
"""

from __future__ import annotations

import argparse
import contextlib
import http.server
import io
import json
import signal
import socket
import socketserver
import sys
import threading
from collections import Counter
from collections.abc import Callable, Iterable
from typing import Any
from urllib.parse import unquote, unquote_to_bytes

STATS_PATH = "/_local/stats"

WsgiApp = Callable[[dict[str, Any], Callable[..., Any]], Iterable[bytes]]
# Response headers the server itself decides.
_HOP_BY_HOP = {"connection", "transfer-encoding", "content-length", "keep-alive"}


class _Server(socketserver.ThreadingMixIn, http.server.HTTPServer):
    daemon_threads = True
    allow_reuse_address = True
    request_queue_size = 1024
    app: WsgiApp
    counts: Counter[str]
    counts_lock: threading.Lock
    connections: set[socket.socket]

    def close_connections(self) -> None:
        """Drops every kept-alive connection (stopping must look like an outage to clients)."""
        with self.counts_lock:
            open_now = list(self.connections)
        for connection in open_now:
            with contextlib.suppress(OSError):
                connection.shutdown(socket.SHUT_RDWR)


class _Handler(http.server.BaseHTTPRequestHandler):
    """Turns each HTTP/1.1 request into one WSGI call; keeps the connection open."""

    protocol_version = "HTTP/1.1"
    server: _Server

    def log_message(self, format: str, *args: Any) -> None:
        pass

    def setup(self) -> None:
        super().setup()
        with self.server.counts_lock:
            self.server.connections.add(self.connection)

    def finish(self) -> None:
        with self.server.counts_lock:
            self.server.connections.discard(self.connection)
        with contextlib.suppress(OSError):
            super().finish()

    def _any(self) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length) if length else b""
        path, _, query = self.path.partition("?")
        if unquote(path) == STATS_PATH:
            with self.server.counts_lock:
                self._send(200, [("Content-Type", "application/json")],
                           json.dumps(dict(self.server.counts)).encode())
            return
        self._count(unquote(path), query)
        environ: dict[str, Any] = {
            "REQUEST_METHOD": self.command,
            "SCRIPT_NAME": "",
            "PATH_INFO": unquote_to_bytes(path).decode("latin-1"),
            "QUERY_STRING": query,
            "RAW_URI": self.path,
            "REQUEST_URI": self.path,
            "SERVER_NAME": self.server.server_address[0],
            "SERVER_PORT": str(self.server.server_address[1]),
            "SERVER_PROTOCOL": self.request_version,
            "REMOTE_ADDR": self.client_address[0],
            "CONTENT_TYPE": self.headers.get("Content-Type", ""),
            "CONTENT_LENGTH": str(len(body)),
            "wsgi.version": (1, 0),
            "wsgi.url_scheme": "http",
            "wsgi.input": io.BytesIO(body),
            "wsgi.errors": sys.stderr,
            "wsgi.multithread": True,
            "wsgi.multiprocess": False,
            "wsgi.run_once": False,
        }
        for name, value in self.headers.items():
            key = "HTTP_" + name.upper().replace("-", "_")
            if key not in ("HTTP_CONTENT_TYPE", "HTTP_CONTENT_LENGTH"):
                environ[key] = f"{environ[key]},{value}" if key in environ else value
        started: list[Any] = []

        def start_response(status: str, headers: list[tuple[str, str]], exc_info: Any = None) -> Any:
            started[:] = [status, headers]
            return lambda data: None

        result = self.server.app(environ, start_response)
        try:
            data = b"".join(result)
        finally:
            close = getattr(result, "close", None)
            if close is not None:
                close()
        status, headers = started
        code = int(status.split(" ", 1)[0])
        self._send(code, [(k, v) for k, v in headers if k.lower() not in _HOP_BY_HOP], data,
                   head=self.command == "HEAD", declared=_declared_length(headers))

    def _send(self, code: int, headers: list[tuple[str, str]], data: bytes, head: bool = False,
              declared: int | None = None) -> None:
        self.send_response_only(code)
        for name, value in headers:
            self.send_header(name, value)
        self.send_header("Content-Length", str(declared if head and declared is not None else len(data)))
        self.end_headers()
        if not head and data:
            self.wfile.write(data)

    def _count(self, path: str, query: str) -> None:
        parts = path.lstrip("/").split("/", 2)
        label = f"{self.command} {parts[1] + '/' if len(parts) > 2 else ''}"
        if "delete" in query.split("&"):
            label += "?delete"
        with self.server.counts_lock:
            self.server.counts[label.strip()] += 1

    do_GET = do_PUT = do_POST = do_DELETE = do_HEAD = _any


def _declared_length(headers: list[tuple[str, str]]) -> int | None:
    for name, value in headers:
        if name.lower() == "content-length" and value.isdigit():
            return int(value)
    return None


class LocalS3:
    """moto's S3 on loopback in a daemon thread."""

    def __init__(self, host: str = "127.0.0.1", port: int = 0) -> None:
        self.host = host
        self.port = port
        self._server: _Server | None = None
        self._thread: threading.Thread | None = None

    @property
    def url(self) -> str:
        """``http://host:port`` once started."""
        if self._server is None:
            raise RuntimeError("the local S3 server is not started")
        return f"http://{self.host}:{self._server.server_address[1]}"

    @property
    def counts(self) -> dict[str, int]:
        """Requests seen so far, by ``METHOD prefix/``."""
        if self._server is None:
            return {}
        with self._server.counts_lock:
            return dict(self._server.counts)

    def start(self) -> LocalS3:
        """Binds and serves; returns self."""
        from moto.moto_server.werkzeug_app import create_backend_app

        server = _Server((self.host, self.port), _Handler)
        server.app = create_backend_app("s3")
        server.counts = Counter()
        server.counts_lock = threading.Lock()
        server.connections = set()
        self._server = server
        self._thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.1},
                                        name="local-s3", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        """Stops serving and closes the listening socket (objects stay until the process ends)."""
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server.close_connections()
        if self._thread is not None:
            self._thread.join(timeout=5)
        self._server = None
        self._thread = None


def main(argv: list[str] | None = None) -> None:
    """Runs the server in the foreground until SIGTERM/SIGINT."""
    parser = argparse.ArgumentParser(description="S3-compatible in-memory server on loopback (moto)")
    parser.add_argument("--listen", default="127.0.0.1:9000", help="host:port (port 0 picks a free one)")
    args = parser.parse_args(argv)
    host, _, port = args.listen.rpartition(":")
    server = LocalS3(host or "127.0.0.1", int(port)).start()
    print(f"local S3 listening on {server.url}", flush=True)
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    stop.wait()
    server.stop()


if __name__ == "__main__":
    main()
