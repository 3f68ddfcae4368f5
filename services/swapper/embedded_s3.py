"""An S3-compatible server on loopback, for local runs and tests: moto's S3 backend.

It is moto's server (what ``ThreadedMotoServer`` runs) serving the S3 app
alone: moto's multi-service dispatcher looks for the target service on every
request, scanning its module directory, which made each request cost ~3 ms
more; keep-alive is on and the per-request log is off. Objects live in
memory and vanish when the process ends. moto does not enforce presigned-URL
expiry.

It also counts requests by method and key prefix (``GET /_embedded/stats``)
so that benchmarks can measure what the swapper really sent.

Standalone: ``python -m services.swapper.embedded_s3 --listen 127.0.0.1:9000``.
"""

from __future__ import annotations

import argparse
import json
import signal
import threading
from collections import Counter
from collections.abc import Callable, Iterable
from typing import Any
from urllib.parse import unquote

from werkzeug.serving import BaseWSGIServer, make_server

STATS_PATH = "/_embedded/stats"

StartResponse = Callable[..., Any]


class _CountingApp:
    """WSGI middleware: counts ``METHOD prefix/`` per request and serves the counts."""

    def __init__(self, app: Callable[[dict[str, Any], StartResponse], Iterable[bytes]]) -> None:
        self.app = app
        self.counts: Counter[str] = Counter()
        self._lock = threading.Lock()

    def __call__(self, environ: dict[str, Any], start_response: StartResponse) -> Iterable[bytes]:
        path = unquote(environ.get("PATH_INFO", ""))
        if path == STATS_PATH:
            with self._lock:
                body = json.dumps(dict(self.counts)).encode()
            start_response("200 OK", [("Content-Type", "application/json"),
                                      ("Content-Length", str(len(body)))])
            return [body]
        parts = path.lstrip("/").split("/", 2)
        prefix = parts[1] if len(parts) > 2 else ""
        query = environ.get("QUERY_STRING", "")
        label = f"{environ.get('REQUEST_METHOD', '?')} {prefix + '/' if prefix else ''}"
        if "delete" in query.split("&"):
            label += "?delete"
        with self._lock:
            self.counts[label.strip()] += 1
        return self.app(environ, start_response)


class EmbeddedS3:
    """moto's S3 on loopback in a daemon thread."""

    def __init__(self, host: str = "127.0.0.1", port: int = 0) -> None:
        self.host = host
        self.port = port
        self._server: BaseWSGIServer | None = None
        self._thread: threading.Thread | None = None
        self._app: _CountingApp | None = None

    @property
    def url(self) -> str:
        """``http://host:port`` once started."""
        if self._server is None:
            raise RuntimeError("the embedded S3 server is not started")
        return f"http://{self.host}:{self._server.server_address[1]}"

    @property
    def counts(self) -> dict[str, int]:
        """Requests seen so far, by ``METHOD prefix/``."""
        return dict(self._app.counts) if self._app else {}

    def start(self) -> EmbeddedS3:
        """Binds and serves; returns self."""
        from moto.moto_server.werkzeug_app import MotoRequestHandler, create_backend_app

        class Handler(MotoRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_request(self, code: int | str = "-", size: int | str = "-") -> None:
                pass

        self._app = _CountingApp(create_backend_app("s3"))
        self._server = make_server(self.host, self.port, self._app, threaded=True,
                                   request_handler=Handler)
        self._thread = threading.Thread(target=self._server.serve_forever, name="embedded-s3",
                                        daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        """Stops serving (in-memory objects stay until the process ends)."""
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
        if self._thread is not None:
            self._thread.join(timeout=5)
        self._server = None
        self._thread = None


def main(argv: list[str] | None = None) -> None:
    """Runs the embedded server in the foreground until SIGTERM/SIGINT."""
    parser = argparse.ArgumentParser(description="S3-compatible in-memory server on loopback (moto)")
    parser.add_argument("--listen", default="127.0.0.1:9000", help="host:port (port 0 picks a free one)")
    args = parser.parse_args(argv)
    host, _, port = args.listen.rpartition(":")
    server = EmbeddedS3(host or "127.0.0.1", int(port)).start()
    print(f"embedded S3 listening on {server.url}", flush=True)
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    stop.wait()
    server.stop()


if __name__ == "__main__":
    main()
