"""Prometheus metrics: one registry per service, served over HTTP on ``<SERVICE>_METRICS_LISTEN``.

Each service has a ``ServiceMetrics`` subclass that declares its metrics on
its own registry (so several services, or replicas, in one test process never
mix their counts), beside what every service has: the process's CPU, memory
and file descriptors, Python's garbage collector, and the gRPC server's calls
(``GrpcServerMetrics``, recorded by the server bootstrap). Names follow
Prometheus' conventions: a ``facegen_<service>_`` prefix (``grpc_`` for the
gRPC metrics, as go-grpc-prometheus names them, so the usual dashboards
work), base units in the name (``_seconds``, ``_bytes``), ``_total`` on
counters. Tests read a value with ``value(metrics.registry, name, labels)``.

The endpoint is off unless the listen address is set: ``0.0.0.0:9464``.
"""

from __future__ import annotations

import threading
from collections.abc import Mapping
from typing import Literal
from wsgiref.simple_server import WSGIServer

from prometheus_client import (
    GC_COLLECTOR,
    PLATFORM_COLLECTOR,
    PROCESS_COLLECTOR,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    disable_created_metrics,
    start_http_server,
)

# No ``*_created`` series (a timestamp per counter and histogram child): a tenth of every scrape,
# and nothing our rules or dashboard read.
disable_created_metrics()

# Call and job durations: from a health check (~1 ms) to a long generation or swap (minutes).
DURATION_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0,
                    600.0)
# Short operations: a storage call, an HTTP request, a wait for a rate-limit slot.
FAST_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)
# Counts per batch or per job (images, requests).
COUNT_BUCKETS = (1, 2, 3, 4, 6, 8, 12, 16, 24, 32, 48, 64)


class GrpcCallMetrics:
    """Calls one side of gRPC made or handled: started, in flight, by final code, and how long they took."""

    def __init__(self, registry: CollectorRegistry, side: Literal["server", "client"]) -> None:
        labels = ("grpc_type", "grpc_service", "grpc_method")
        where = "on the server" if side == "server" else "by the client"
        self.started = Counter(f"grpc_{side}_started_total", f"RPCs started {where}.", labels, registry=registry)
        self.handled = Counter(f"grpc_{side}_handled_total", f"RPCs completed {where}, by status code.",
                               (*labels, "grpc_code"), registry=registry)
        self.seconds = Histogram(f"grpc_{side}_handling_seconds",
                                 "Time from the start of an RPC to its status (whole streams included).",
                                 labels, buckets=DURATION_BUCKETS, registry=registry)
        self.in_flight = Gauge(f"grpc_{side}_calls_in_flight", f"RPCs (streams included) in progress {where}.",
                               labels, registry=registry)


class GrpcServerMetrics(GrpcCallMetrics):
    """The server side's call metrics (``grpc_server_*``)."""

    def __init__(self, registry: CollectorRegistry) -> None:
        super().__init__(registry, "server")


class GrpcClientMetrics(GrpcCallMetrics):
    """The client side's call metrics (``grpc_client_*``)."""

    def __init__(self, registry: CollectorRegistry) -> None:
        super().__init__(registry, "client")


class ServiceMetrics:
    """A service's registry with the process, garbage-collector and gRPC server metrics in it."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        for collector in (PROCESS_COLLECTOR, PLATFORM_COLLECTOR, GC_COLLECTOR):
            self.registry.register(collector)
        self.grpc_server = GrpcServerMetrics(self.registry)


def value(registry: CollectorRegistry, name: str, labels: Mapping[str, str] | None = None) -> float:
    """The current value of one sample (0 when it was never recorded): what tests and benchmarks read."""
    found = registry.get_sample_value(name, dict(labels or {}))
    return 0.0 if found is None else found


def parse_listen(listen: str) -> tuple[str, int]:
    """``host:port`` (``[::]:port`` for IPv6) as (host, port); ValueError when it is not one."""
    host, sep, port = listen.rpartition(":")
    if not sep or not port.isdigit() or not 0 <= int(port) <= 65535:
        raise ValueError("is not host:port")
    return host.strip("[]") or "0.0.0.0", int(port)


class MetricsEndpoint:
    """``GET /metrics`` of one registry, served by prometheus_client's HTTP server on a thread of its own."""

    def __init__(self, registry: CollectorRegistry, listen: str | None) -> None:
        self.registry = registry
        self.listen = listen
        self.port = 0
        self._server: WSGIServer | None = None
        self._thread: threading.Thread | None = None

    def start(self) -> int:
        """Binds and serves (nothing when no address is set); returns the port (0 when off)."""
        if self.listen is None or self._server is not None:
            return self.port
        host, port = parse_listen(self.listen)
        server, self._thread = start_http_server(port, host, registry=self.registry)
        self._server = server
        self.port = int(server.server_port)
        return self.port

    def stop(self) -> None:
        """Stops serving and releases the port."""
        server, self._server = self._server, None
        if server is not None:
            server.shutdown()
            server.server_close()
        if self._thread is not None:
            self._thread.join(5.0)
            self._thread = None

    def __repr__(self) -> str:
        return f"MetricsEndpoint({self.listen!r}, port={self.port})"

