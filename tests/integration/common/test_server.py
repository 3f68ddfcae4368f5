"""The shared aio server bootstrap: health, reflection, error mapping, limits, graceful stop."""

import asyncio
from collections.abc import AsyncIterator

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

from facegen.v1 import common_pb2, generator_pb2, generator_pb2_grpc
from services.common import errors
from services.common.channel import internal_channel
from services.common.config import ServerSettings
from services.common.health import is_serving, wait_until_serving
from services.common.server import ServiceServer

pytestmark = pytest.mark.integration

SERVICE = generator_pb2.DESCRIPTOR.services_by_name["GeneratorService"].full_name


class ScriptedGenerator(generator_pb2_grpc.GeneratorServiceServicer):
    """ListModels raises what the request's prompt names; Generate streams steps."""

    def __init__(self) -> None:
        self.raise_next: BaseException | None = None
        self.release = asyncio.Event()
        self.started = asyncio.Event()

    async def ListModels(self, request, context):
        if self.raise_next is not None:
            raise self.raise_next
        return common_pb2.ListModelsResponse(models=[common_pb2.ModelInfo(name="m")])

    async def Generate(self, request, context) -> AsyncIterator[generator_pb2.GenerateEvent]:
        if request.prompt == "fail":
            yield generator_pb2.GenerateEvent(step=generator_pb2.StepProgress(step=1, total_steps=2))
            raise errors.ResourceExhausted("queue is full (8 waiting)")
        if request.prompt == "big":
            png = b"\x89PNG" + b"\0" * (20 * 1024 * 1024)
            yield generator_pb2.GenerateEvent(image=generator_pb2.GeneratedImage(png=png))
            return
        self.started.set()
        await self.release.wait()
        yield generator_pb2.GenerateEvent(done=generator_pb2.GenerateDone(model="m"))


@pytest.fixture
async def served():
    servicer = ScriptedGenerator()
    settings = ServerSettings(listen="127.0.0.1:0", grace_seconds=5.0, max_message_bytes=32 * 1024 * 1024)
    server = ServiceServer(settings, [SERVICE],
                           lambda s: generator_pb2_grpc.add_GeneratorServiceServicer_to_server(servicer, s))
    port = await server.start()
    channel = internal_channel(f"127.0.0.1:{port}")
    yield server, servicer, channel
    await channel.close()
    await server.stop(0)


async def test_health_is_not_serving_until_ready(served) -> None:
    server, _, channel = served
    health = health_pb2_grpc.HealthStub(channel)
    for name in ("", SERVICE):
        reply = await health.Check(health_pb2.HealthCheckRequest(service=name))
        assert reply.status == health_pb2.HealthCheckResponse.NOT_SERVING
    await server.set_serving(True)
    reply = await health.Check(health_pb2.HealthCheckRequest(service=SERVICE))
    assert reply.status == health_pb2.HealthCheckResponse.SERVING


async def test_reflection_lists_and_describes_the_service(served) -> None:
    _, _, channel = served
    stub = reflection_pb2_grpc.ServerReflectionStub(channel)

    async def ask(**kwargs):
        responses = stub.ServerReflectionInfo(iter([reflection_pb2.ServerReflectionRequest(**kwargs)]))
        async for response in responses:
            return response
        raise AssertionError("no reflection response")

    listed = await ask(list_services="")
    names = {s.name for s in listed.list_services_response.service}
    assert {SERVICE, "grpc.health.v1.Health"} <= names
    described = await ask(file_containing_symbol=SERVICE)
    assert described.file_descriptor_response.file_descriptor_proto


@pytest.mark.parametrize(
    ("exc", "code", "text"),
    [
        (errors.InvalidInput("width must be a multiple of 8 in 64..2048"),
         grpc.StatusCode.INVALID_ARGUMENT, "width must be a multiple of 8"),
        (errors.NotFound("model 'x' is not in the catalog"), grpc.StatusCode.NOT_FOUND, "model 'x'"),
        (RuntimeError("secret path /etc/creds"), grpc.StatusCode.INTERNAL, "internal error (incident"),
    ],
)
async def test_interceptor_applies_the_status_table(served, exc, code, text) -> None:
    _, servicer, channel = served
    servicer.raise_next = exc
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await generator_pb2_grpc.GeneratorServiceStub(channel).ListModels(common_pb2.ListModelsRequest())
    assert caught.value.code() == code
    assert text in caught.value.details()
    assert "/etc/creds" not in caught.value.details()


async def test_errors_in_streams_are_mapped_after_earlier_messages(served) -> None:
    _, _, channel = served
    call = generator_pb2_grpc.GeneratorServiceStub(channel).Generate(generator_pb2.GenerateRequest(prompt="fail"))
    received = []
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        async for event in call:
            received.append(event)
    assert len(received) == 1 and received[0].step.step == 1
    assert caught.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert "queue is full" in caught.value.details()


async def test_messages_up_to_the_image_limit_pass(served) -> None:
    _, _, channel = served
    call = generator_pb2_grpc.GeneratorServiceStub(channel).Generate(generator_pb2.GenerateRequest(prompt="big"))
    events = [event async for event in call]
    assert len(events[0].image.png) > 20 * 1024 * 1024


async def test_graceful_stop_drains_in_flight_streams_and_reports_not_serving(served) -> None:
    server, servicer, channel = served
    await server.set_serving(True)
    call = generator_pb2_grpc.GeneratorServiceStub(channel).Generate(generator_pb2.GenerateRequest(prompt="slow"))
    await servicer.started.wait()
    stopping = asyncio.create_task(server.stop(5.0))
    health = health_pb2_grpc.HealthStub(channel)
    # New calls are refused once the stop begins, but the in-flight stream may finish.
    servicer.release.set()
    events = [event async for event in call]
    assert events[-1].done.model == "m"
    await stopping
    assert server.health._server_status[""] == health_pb2.HealthCheckResponse.NOT_SERVING
    with pytest.raises(grpc.aio.AioRpcError):
        await health.Check(health_pb2.HealthCheckRequest(), timeout=1)


async def test_wait_until_serving_returns_when_the_service_becomes_ready(served) -> None:
    server, _, channel = served
    waiting = asyncio.create_task(wait_until_serving(channel, 10))
    await asyncio.sleep(0)  # let the watcher start before the change (ordering only, not timing)
    assert not waiting.done()
    await server.set_serving(True)
    await waiting
    assert await asyncio.to_thread(is_serving, f"127.0.0.1:{server.port}")  # blocking client: off the loop


async def test_wait_until_serving_times_out_on_a_server_that_never_gets_ready(served) -> None:
    _, _, channel = served
    with pytest.raises(TimeoutError):
        await wait_until_serving(channel, 0.5)
