"""An OTLP trace receiver for tests and benchmarks: a real gRPC server implementing the collector's
``TraceService`` from ``opentelemetry-proto``, keeping every span it is sent.

It runs on a thread of its own (a plain ``grpc.server``), so blocking tests and asyncio
benchmarks use it alike::

    with OtlpReceiver() as receiver:
        stack = LocalStack(..., otlp_endpoint=receiver.endpoint)
        ...
        spans = receiver.wait_for(lambda spans: any(s.name == "facegen.job" for s in spans))
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from concurrent import futures
from dataclasses import dataclass, field
from types import TracebackType
from typing import Any

import grpc
from opentelemetry.proto.collector.trace.v1 import trace_service_pb2, trace_service_pb2_grpc

from tests.waiting import until_sync


@dataclass(frozen=True)
class ReceivedSpan:
    """One span as it arrived, with the service that sent it."""

    service: str
    name: str
    trace_id: str
    span_id: str
    parent_id: str
    kind: int
    attributes: dict[str, Any]
    events: list[str] = field(default_factory=list)


def _value(any_value: Any) -> Any:
    kind = any_value.WhichOneof("value")
    return getattr(any_value, kind) if kind else None


class _Service(trace_service_pb2_grpc.TraceServiceServicer):
    def __init__(self, receiver: OtlpReceiver) -> None:
        self.receiver = receiver

    def Export(self, request: trace_service_pb2.ExportTraceServiceRequest,
               context: grpc.ServicerContext) -> trace_service_pb2.ExportTraceServiceResponse:
        received = []
        for resource_spans in request.resource_spans:
            resource = {item.key: _value(item.value) for item in resource_spans.resource.attributes}
            for scope_spans in resource_spans.scope_spans:
                for span in scope_spans.spans:
                    received.append(ReceivedSpan(
                        service=str(resource.get("service.name", "")), name=span.name,
                        trace_id=span.trace_id.hex(), span_id=span.span_id.hex(),
                        parent_id=span.parent_span_id.hex(), kind=span.kind,
                        attributes={item.key: _value(item.value) for item in span.attributes},
                        events=[event.name for event in span.events]))
        with self.receiver.lock:
            self.receiver.spans.extend(received)
            self.receiver.requests += 1
        return trace_service_pb2.ExportTraceServiceResponse()


class OtlpReceiver:
    """Collects the spans exporters send it; ``endpoint`` is what OTEL_EXPORTER_OTLP_ENDPOINT takes."""

    def __init__(self) -> None:
        self.spans: list[ReceivedSpan] = []
        self.requests = 0
        self.lock = threading.Lock()
        self._server = grpc.server(futures.ThreadPoolExecutor(max_workers=4),
                                   options=[("grpc.max_receive_message_length", 64 * 1024 * 1024)])
        trace_service_pb2_grpc.add_TraceServiceServicer_to_server(_Service(self), self._server)
        self.port = self._server.add_insecure_port("127.0.0.1:0")

    @property
    def endpoint(self) -> str:
        """``http://127.0.0.1:PORT`` (plain gRPC)."""
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> OtlpReceiver:
        """Serves until ``stop``."""
        self._server.start()
        return self

    def stop(self) -> None:
        """Stops serving."""
        self._server.stop(0).wait(5)

    def __enter__(self) -> OtlpReceiver:
        return self.start()

    def __exit__(self, kind: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.stop()

    def snapshot(self) -> list[ReceivedSpan]:
        """Every span received so far."""
        with self.lock:
            return list(self.spans)

    def wait_for(self, condition: Callable[[list[ReceivedSpan]], bool], within_s: float = 30.0,
                 what: str = "the spans") -> list[ReceivedSpan]:
        """Every span received, once ``condition`` holds for them (exporters batch: spans come late)."""
        return until_sync(lambda: (spans if condition(spans := self.snapshot()) else None), within_s, what,
                          every_s=0.05) or []
