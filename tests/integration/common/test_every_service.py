"""What the shared server code gives every service, checked on the real gateway, generator and swapper.

Each server is built the way its ``__main__`` builds it (``services.common.app``)
and listens on a loopback port; nothing a request could reach behind the
server is needed, because what is checked here happens before any servicer
method runs.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import AsyncIterator, Callable, Iterator
from typing import Any

import grpc
import pytest
from google.protobuf import descriptor_pb2, descriptor_pool
from google.protobuf.descriptor import Descriptor, FieldDescriptor, MethodDescriptor, ServiceDescriptor
from grpc_health.v1 import health_pb2
from grpc_reflection.v1alpha import reflection_pb2

from facegen.v1 import gateway_pb2, generator_pb2, swapper_pb2
from services.common.app import ServiceApp
from services.common.config import ServerSettings
from services.gateway.app import GatewayApp
from services.gateway.settings import Settings as GatewaySettings
from services.generator.app import GeneratorApp
from services.generator.settings import DEFAULT_MODELS_DIR
from services.generator.settings import Settings as GeneratorSettings
from services.swapper.app import SwapperApp
from services.swapper.settings import Settings as SwapperSettings

pytestmark = pytest.mark.integration

# What ServiceServer adds to every service.
SHARED = (health_pb2.DESCRIPTOR.services_by_name["Health"],
          reflection_pb2.DESCRIPTOR.services_by_name["ServerReflection"])
SERVICES = {
    "gateway": gateway_pb2.DESCRIPTOR.services_by_name["GatewayService"],
    "generator": generator_pb2.DESCRIPTOR.services_by_name["GeneratorService"],
    "swapper": swapper_pb2.DESCRIPTOR.services_by_name["SwapperService"],
}


# Each service as its __main__ builds it: its settings class from an environment, then its app. What is
# checked here needs no prepare(): the generator loads no model, the swapper checks no storage.
APPS: dict[str, tuple[Callable[[Any], ServiceApp], type[ServerSettings], dict[str, str]]] = {
    # With a token, to show that a malformed request is answered before (and without) the auth check.
    "gateway": (GatewayApp, GatewaySettings, {"GATEWAY_AUTH_TOKEN": "secret-token", "GENERATOR_ADDRESS": "127.0.0.1:1",
                                              "SWAPPER_ADDRESS": "127.0.0.1:1"}),
    "generator": (GeneratorApp, GeneratorSettings, {"GENERATOR_MODELS_DIR": str(DEFAULT_MODELS_DIR),
                                                    "GENERATOR_DEVICE": "cpu"}),
    "swapper": (SwapperApp, SwapperSettings, {"S3_ENDPOINT_URL": "http://127.0.0.1:1", "S3_ACCESS_KEY_ID": "k",
                                              "S3_SECRET_ACCESS_KEY": "s"}),
}


@contextlib.asynccontextmanager
async def listening(name: str) -> AsyncIterator[int]:
    """The service's app, listening (NOT_SERVING) on a free loopback port."""
    app_class, settings_class, env = APPS[name]
    prefix = name.upper()
    app = app_class(settings_class.from_env({f"{prefix}_LISTEN": "127.0.0.1:0", f"{prefix}_GRACE_SECONDS": "0",
                                             **env}))
    port = await app.listen()
    try:
        yield port
    finally:
        await app.stop()


def _string_field(message: Descriptor) -> FieldDescriptor | None:
    return next((f for f in message.fields if f.type == FieldDescriptor.TYPE_STRING
                 and not f.is_repeated), None)


def _bad_payloads(message: Descriptor) -> Iterator[tuple[str, bytes]]:
    """Bytes that are not a valid ``message``: garbage, and (if it has one) a string field holding invalid UTF-8."""
    yield "garbage", b"\xff\xff\xff"
    field = _string_field(message)
    if field is not None:
        yield f"invalid-utf8-{field.name}", bytes([field.number << 3 | 2, 2]) + b"\xff\xfe"


def _calls(service: ServiceDescriptor) -> list[tuple[MethodDescriptor, str, bytes]]:
    return [(method, kind, payload) for method in service.methods
            for kind, payload in _bad_payloads(method.input_type)]


async def _send(channel: grpc.aio.Channel, method: MethodDescriptor, payload: bytes) -> grpc.aio.AioRpcError:
    """Sends raw ``payload`` to ``method`` (identity serialisers) and returns the error it ends with."""
    path = f"/{method.containing_service.full_name}/{method.name}"
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        if method.client_streaming:
            call = channel.stream_stream(path)(iter([payload]), timeout=10)
            async for _ in call:
                pass
        elif method.server_streaming:
            async for _ in channel.unary_stream(path)(payload, timeout=10):
                pass
        else:
            await channel.unary_unary(path)(payload, timeout=10)
    return caught.value


@pytest.mark.parametrize("name", sorted(SERVICES))
async def test_malformed_request_bytes_get_invalid_argument_and_one_warning(
        name: str, caplog: pytest.LogCaptureFixture) -> None:
    async with listening(name) as port, grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
        # Derived from v1alpha when the first server starts (grpcio-reflection has no v1 module).
        reflection_v1 = descriptor_pool.Default().FindServiceByName("grpc.reflection.v1.ServerReflection")
        calls = [call for service in (SERVICES[name], *SHARED, reflection_v1) for call in _calls(service)]
        for method, kind, payload in calls:
            caplog.clear()
            with caplog.at_level(logging.INFO):
                error = await _send(channel, method, payload)
            what = f"{method.full_name} ({kind})"
            assert error.code() == grpc.StatusCode.INVALID_ARGUMENT, f"{what}: {error.code()} {error.details()}"
            details = error.details() or ""
            assert method.input_type.full_name in details and len(details) < 120, what
            assert "DecodeError" not in details and "Unexpected" not in details, what
            warnings = [r for r in caplog.records if r.levelno >= logging.WARNING]
            assert len(warnings) == 1, f"{what}: {[r.getMessage() for r in warnings]}"
            (warning,) = warnings
            assert warning.levelno == logging.WARNING and warning.exc_info is None, what
            assert "event=rpc.malformed_request" in warning.getMessage(), what
            assert method.name in warning.getMessage(), what


async def _reflect(channel: grpc.aio.Channel, version: str,
                   request: reflection_pb2.ServerReflectionRequest) -> reflection_pb2.ServerReflectionResponse:
    """One reflection exchange on ``grpc.reflection.<version>``. The v1 protocol has the same
    messages as v1alpha, field for field, so v1alpha's classes encode a v1 client's bytes."""
    call = channel.stream_stream(
        f"/grpc.reflection.{version}.ServerReflection/ServerReflectionInfo",
        request_serializer=reflection_pb2.ServerReflectionRequest.SerializeToString,
        response_deserializer=reflection_pb2.ServerReflectionResponse.FromString)(iter([request]), timeout=10)
    responses = [response async for response in call]
    assert len(responses) == 1
    return responses[0]


@pytest.mark.parametrize("name", sorted(SERVICES))
@pytest.mark.parametrize("version", ["v1", "v1alpha"])
async def test_reflection_v1_and_v1alpha_list_and_describe_the_services(name: str, version: str) -> None:
    async with listening(name) as port, grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
        listed = await _reflect(channel, version, reflection_pb2.ServerReflectionRequest(list_services=""))
        names = {service.name for service in listed.list_services_response.service}
        assert names == {SERVICES[name].full_name, "grpc.health.v1.Health",
                         "grpc.reflection.v1.ServerReflection", "grpc.reflection.v1alpha.ServerReflection"}
        for symbol in (SERVICES[name].full_name, "grpc.reflection.v1.ServerReflection"):
            described = await _reflect(channel, version,
                                       reflection_pb2.ServerReflectionRequest(file_containing_symbol=symbol))
            files = [descriptor_pb2.FileDescriptorProto.FromString(raw)
                     for raw in described.file_descriptor_response.file_descriptor_proto]
            package, _, service = symbol.rpartition(".")
            assert any(f.package == package and service in {s.name for s in f.service} for f in files), symbol
