"""Stock tools can discover the gateway: server reflection lists and describes it."""

from __future__ import annotations

import asyncio

import grpc
import pytest
from google.protobuf.descriptor_pool import DescriptorPool
from grpc_reflection.v1alpha.proto_reflection_descriptor_database import ProtoReflectionDescriptorDatabase

from tests.integration.gateway.conftest import Gateway

pytestmark = pytest.mark.integration


def list_and_describe(address: str) -> tuple[list[str], dict[str, tuple[str, str, bool]]]:
    """What grpcurl's `list` and `describe facegen.v1.GatewayService` would show, via reflection only."""
    with grpc.insecure_channel(address) as channel:
        database = ProtoReflectionDescriptorDatabase(channel)
        services = list(database.get_services())
        pool = DescriptorPool(database)
        service = pool.FindServiceByName("facegen.v1.GatewayService")
        methods = {method.name: (method.input_type.full_name, method.output_type.full_name,
                                 method.server_streaming) for method in service.methods}
        return services, methods


async def test_reflection_lists_and_describes_the_gateway_service(gateway: Gateway) -> None:
    # A blocking client, so it runs in a thread while this loop serves it.
    services, methods = await asyncio.to_thread(list_and_describe, gateway.address)
    assert "facegen.v1.GatewayService" in services
    assert "grpc.health.v1.Health" in services
    assert methods == {
        "Run": ("facegen.v1.JobRequest", "facegen.v1.JobEvent", True),
        "Submit": ("facegen.v1.JobRequest", "facegen.v1.SubmitResponse", False),
        "Watch": ("facegen.v1.WatchRequest", "facegen.v1.JobEvent", True),
        "Get": ("facegen.v1.GetRequest", "facegen.v1.Job", False),
        "Cancel": ("facegen.v1.CancelRequest", "facegen.v1.CancelResponse", False),
        "ListModels": ("facegen.v1.ListModelsRequest", "facegen.v1.ListModelsResponse", False),
    }
