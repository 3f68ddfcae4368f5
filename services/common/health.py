"""Asking a gRPC server whether it is serving, through the standard health service."""

from __future__ import annotations

import asyncio

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

SERVING = health_pb2.HealthCheckResponse.SERVING


def is_serving(address: str, timeout_s: float = 1.0) -> bool:
    """One blocking check: True when the server at ``address`` reports SERVING now."""
    with grpc.insecure_channel(address) as channel:
        try:
            reply = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=timeout_s)
        except grpc.RpcError:
            return False
    return bool(reply.status == SERVING)


async def wait_until_serving(channel: grpc.aio.Channel, timeout_s: float, service: str = "") -> None:
    """Returns once the server behind ``channel`` reports SERVING for ``service``.

    Follows the health Watch stream (waiting for the server to come up), so it
    reacts to the change at once instead of polling. Raises TimeoutError after
    ``timeout_s``, or the gRPC error when the server goes away.
    """
    async with asyncio.timeout(timeout_s):
        updates = health_pb2_grpc.HealthStub(channel).Watch(
            health_pb2.HealthCheckRequest(service=service), wait_for_ready=True)
        try:
            async for reply in updates:
                if reply.status == SERVING:
                    return
        finally:
            updates.cancel()
    raise TimeoutError("the health stream ended before the server reported SERVING")
