"""Every gRPC server counts and times its calls by final code, serves them on /metrics, and, with tracing on,
runs each call in a server span that continues the caller's W3C trace (log lines inside carry its ids)."""

import asyncio
import json
import logging
import urllib.request
from collections.abc import AsyncIterator, Iterator

import grpc
import pytest
from opentelemetry.trace import SpanKind

from facegen.v1 import common_pb2, generator_pb2, generator_pb2_grpc
from services.common import errors, logs
from services.common.channel import internal_channel
from services.common.config import ServerSettings
from services.common.health import is_serving
from services.common.metrics import value
from services.common.server import ServiceServer
from tests.waiting import until

pytestmark = pytest.mark.integration

SERVICE = generator_pb2.DESCRIPTOR.services_by_name["GeneratorService"].full_name
TRACE_ID = "4bf92f3577b34da6a3ce929d0e0e4736"
PARENT_ID = "00f067aa0ba902b7"
log = logging.getLogger("facegen.test.observe")


class Scripted(generator_pb2_grpc.GeneratorServiceServicer):
    def __init__(self) -> None:
        self.release = asyncio.Event()

    async def ListModels(self, request, context):
        logs.event(log, "scripted.list_models")
        if ("refuse", "1") in (context.invocation_metadata() or ()):
            raise errors.ResourceExhausted("full")
        return common_pb2.ListModelsResponse()

    async def Generate(self, request, context) -> AsyncIterator[generator_pb2.GenerateEvent]:
        yield generator_pb2.GenerateEvent(step=generator_pb2.StepProgress(step=1, total_steps=2))
        await self.release.wait()
        yield generator_pb2.GenerateEvent(done=generator_pb2.GenerateDone(model="m"))


@pytest.fixture
async def served():
    servicer = Scripted()
    settings = ServerSettings(listen="127.0.0.1:0", metrics_listen="127.0.0.1:0")
    server = ServiceServer(settings, [SERVICE],
                           lambda s: generator_pb2_grpc.add_GeneratorServiceServicer_to_server(servicer, s))
    port = await server.start()
    channel = internal_channel(f"127.0.0.1:{port}")
    yield server, servicer, generator_pb2_grpc.GeneratorServiceStub(channel)
    await channel.close()
    await server.stop(0)


@pytest.fixture
def json_logs() -> Iterator[None]:
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    logs.configure("testsvc", "INFO", "json")
    yield
    root.handlers[:] = handlers
    root.setLevel(level)


def handled(server: ServiceServer, method: str, code: str) -> float:
    return value(server.metrics.registry, "grpc_server_handled_total",
                 {"grpc_type": "unary" if method == "ListModels" else "server_stream", "grpc_service": SERVICE,
                  "grpc_method": method, "grpc_code": code})


async def test_calls_are_counted_by_code_timed_and_in_flight_streams_are_gauged(served) -> None:
    server, servicer, stub = served
    await stub.ListModels(common_pb2.ListModelsRequest())
    with pytest.raises(grpc.aio.AioRpcError):
        await stub.ListModels(common_pb2.ListModelsRequest(), metadata=(("refuse", "1"),))
    assert handled(server, "ListModels", "OK") == 1
    assert handled(server, "ListModels", "RESOURCE_EXHAUSTED") == 1
    labels = {"grpc_type": "unary", "grpc_service": SERVICE, "grpc_method": "ListModels"}
    assert value(server.metrics.registry, "grpc_server_handling_seconds_count", labels) == 2

    stream = {"grpc_type": "server_stream", "grpc_service": SERVICE, "grpc_method": "Generate"}
    call = stub.Generate(generator_pb2.GenerateRequest(prompt="p"))
    await call.read()
    assert value(server.metrics.registry, "grpc_server_calls_in_flight", stream) == 1
    call.cancel()
    await until(lambda: handled(server, "Generate", "CANCELLED") == 1, 5, "the cancelled stream counted")
    assert value(server.metrics.registry, "grpc_server_calls_in_flight", stream) == 0
    servicer.release.set()
    assert [e.WhichOneof("event") async for e in stub.Generate(generator_pb2.GenerateRequest(prompt="p"))] == [
        "step", "done"]
    assert handled(server, "Generate", "OK") == 1


async def test_the_endpoint_serves_the_registry_in_prometheus_text(served) -> None:
    server, _, stub = served
    await stub.ListModels(common_pb2.ListModelsRequest())
    url = f"http://127.0.0.1:{server.metrics_endpoint.port}/metrics"
    body = await asyncio.to_thread(lambda: urllib.request.urlopen(url, timeout=5).read().decode())
    assert (f'grpc_server_handled_total{{grpc_code="OK",grpc_method="ListModels",grpc_service="{SERVICE}",'
            'grpc_type="unary"} 1.0') in body
    assert "process_cpu_seconds_total" in body and "python_gc_objects_collected_total" in body
    await server.stop(0)
    with pytest.raises(OSError):
        await asyncio.to_thread(lambda: urllib.request.urlopen(url, timeout=2))


async def test_without_a_listen_address_no_endpoint_is_served() -> None:
    server = ServiceServer(ServerSettings(listen="127.0.0.1:0"), [SERVICE], lambda s: None)
    await server.start()
    try:
        assert server.metrics_endpoint.port == 0
    finally:
        await server.stop(0)


async def test_a_call_continues_the_callers_trace_and_its_log_lines_carry_it(served, spans, json_logs,
                                                                             capsys) -> None:
    _, _, stub = served
    traceparent = f"00-{TRACE_ID}-{PARENT_ID}-01"
    await stub.ListModels(common_pb2.ListModelsRequest(), metadata=(("traceparent", traceparent),))
    await stub.ListModels(common_pb2.ListModelsRequest())  # no caller trace: a new one

    first, second = spans.get_finished_spans()
    assert first.name == f"{SERVICE}/ListModels" and first.kind == SpanKind.SERVER
    assert f"{first.context.trace_id:032x}" == TRACE_ID and f"{first.parent.span_id:016x}" == PARENT_ID
    assert first.attributes["rpc.grpc.status_code"] == 0
    assert f"{second.context.trace_id:032x}" != TRACE_ID and second.parent is None
    lines = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    listed = [line for line in lines if line["event"] == "scripted.list_models"]
    assert listed[0]["trace_id"] == TRACE_ID and listed[0]["span_id"] == f"{first.context.span_id:016x}"


async def test_health_checks_are_counted_but_not_traced(served, spans) -> None:
    server, _, _ = served
    assert await asyncio.to_thread(is_serving, f"127.0.0.1:{server.port}") is False  # NOT_SERVING yet
    assert spans.get_finished_spans() == ()
    assert value(server.metrics.registry, "grpc_server_handled_total",
                 {"grpc_type": "unary", "grpc_service": "grpc.health.v1.Health", "grpc_method": "Check",
                  "grpc_code": "OK"}) == 1
