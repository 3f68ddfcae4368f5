"""The gRPC face of the swapper: ``facegen.v1.SwapperService`` over the ``Swapper`` core."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator

import grpc

from facegen.v1 import swapper_pb2, swapper_pb2_grpc
from services.swapper.swap import Swapper


class SwapperServicer(swapper_pb2_grpc.SwapperServiceServicer):
    """Each RPC is one call into the core; the core checks, logs and raises the mapped errors."""

    def __init__(self, core: Swapper) -> None:
        self.core = core

    async def PutReference(self, request: swapper_pb2.PutReferenceRequest,
                           context: grpc.aio.ServicerContext) -> swapper_pb2.PutReferenceResponse:
        key, deduplicated = await self.core.put_reference(request.job_id, request.image)
        return swapper_pb2.PutReferenceResponse(key=key, deduplicated=deduplicated)

    async def CheckReference(self, request: swapper_pb2.CheckReferenceRequest,
                             context: grpc.aio.ServicerContext) -> swapper_pb2.CheckReferenceResponse:
        await self.core.check_reference(request.job_id, request.key)
        return swapper_pb2.CheckReferenceResponse()

    async def PutTarget(self, request: swapper_pb2.PutTargetRequest,
                        context: grpc.aio.ServicerContext) -> swapper_pb2.PutTargetResponse:
        key = await self.core.put_target(request.job_id, request.image_index, request.image)
        return swapper_pb2.PutTargetResponse(key=key)

    async def Swap(self, request: swapper_pb2.SwapRequest,
                   context: grpc.aio.ServicerContext) -> AsyncIterator[swapper_pb2.SwapEvent]:
        """Streams stored → submitted → remote status × N → result; errors end the call with a mapped status."""
        async with contextlib.aclosing(self.core.events(request, context.time_remaining())) as events:
            async for event in events:
                yield event

    async def CancelSwap(self, request: swapper_pb2.CancelSwapRequest,
                         context: grpc.aio.ServicerContext) -> swapper_pb2.CancelSwapResponse:
        cancelled = await self.core.cancel_swap(request.job_id, request.image_index)
        return swapper_pb2.CancelSwapResponse(remote_cancelled=cancelled)
