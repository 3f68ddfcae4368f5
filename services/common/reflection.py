"""Server reflection in both protocol versions: ``grpc.reflection.v1`` and ``v1alpha``.

Current grpcurl and Postman ask for v1 first; grpcio-reflection (1.85) serves
only v1alpha (grpc/grpc#38576 asks for v1). The v1 protocol is v1alpha's
messages, field for field, under another package, so v1's file descriptor is
derived from v1alpha's by renaming the package (and added to the descriptor
pool, so that reflection describes the v1 service too), and the v1 method
hands each request to the one v1alpha servicer, converting the messages
through their bytes, which are the same in both versions.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Iterable
from typing import Any

import grpc
from google.protobuf import descriptor_pb2, descriptor_pool, message_factory
from google.protobuf.descriptor import FileDescriptor
from grpc_reflection.v1alpha import reflection, reflection_pb2, reflection_pb2_grpc

_ALPHA = reflection_pb2.DESCRIPTOR.package
V1_PACKAGE = "grpc.reflection.v1"
V1_SERVICE_NAME = f"{V1_PACKAGE}.ServerReflection"
V1ALPHA_SERVICE_NAME = reflection.SERVICE_NAME
SERVICE_NAMES = (V1_SERVICE_NAME, V1ALPHA_SERVICE_NAME)


def _v1_file() -> FileDescriptor:
    """``grpc/reflection/v1/reflection.proto`` in the default pool (added once)."""
    pool = descriptor_pool.Default()
    name = "grpc/reflection/v1/reflection.proto"
    try:
        return pool.FindFileByName(name)
    except KeyError:
        pass
    proto = descriptor_pb2.FileDescriptorProto()
    reflection_pb2.DESCRIPTOR.CopyToProto(proto)
    proto.name, proto.package = name, V1_PACKAGE
    proto.options.Clear()
    proto.options.java_package = "io.grpc.reflection.v1"
    proto.options.java_outer_classname = "ServerReflectionProto"
    proto.options.java_multiple_files = True
    proto.options.go_package = "google.golang.org/grpc/reflection/grpc_reflection_v1"
    for message in proto.message_type:
        for field in message.field:
            if field.type_name:
                field.type_name = field.type_name.replace(f".{_ALPHA}.", f".{V1_PACKAGE}.")
    for method in proto.service[0].method:
        method.input_type = method.input_type.replace(f".{_ALPHA}.", f".{V1_PACKAGE}.")
        method.output_type = method.output_type.replace(f".{_ALPHA}.", f".{V1_PACKAGE}.")
    pool.Add(proto)
    return pool.FindFileByName(name)


def enable_reflection(service_names: Iterable[str], server: grpc.aio.Server) -> None:
    """Serves both reflection versions on ``server``, listing ``service_names`` and themselves."""
    v1 = _v1_file()
    v1_request = message_factory.GetMessageClass(v1.message_types_by_name["ServerReflectionRequest"])
    v1_response = message_factory.GetMessageClass(v1.message_types_by_name["ServerReflectionResponse"])
    servicer = reflection.aio.ReflectionServicer((*service_names, *SERVICE_NAMES))
    reflection_pb2_grpc.add_ServerReflectionServicer_to_server(servicer, server)

    async def as_v1alpha(requests: AsyncIterator[Any]) -> AsyncIterator[reflection_pb2.ServerReflectionRequest]:
        async for request in requests:
            yield reflection_pb2.ServerReflectionRequest.FromString(request.SerializeToString())

    async def info(requests: AsyncIterator[Any], context: grpc.aio.ServicerContext) -> AsyncIterator[Any]:
        async with contextlib.aclosing(servicer.ServerReflectionInfo(as_v1alpha(requests), context)) as answers:
            async for response in answers:
                yield v1_response.FromString(response.SerializeToString())

    handler = grpc.stream_stream_rpc_method_handler(
        info, request_deserializer=v1_request.FromString, response_serializer=v1_response.SerializeToString)
    server.add_generic_rpc_handlers(
        (grpc.method_handlers_generic_handler(V1_SERVICE_NAME, {"ServerReflectionInfo": handler}),))
