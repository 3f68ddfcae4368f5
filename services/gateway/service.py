"""The GatewayService RPCs: authentication, then the JobManager."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator

import grpc

from facegen.v1 import common_pb2, gateway_pb2, gateway_pb2_grpc
from services.common import logs
from services.gateway.auth import AuthenticationFailed, Authenticator, caller_var
from services.gateway.manager import JobManager
from services.gateway.upstreams import Upstreams

log = logging.getLogger(__name__)

RUN_CLOSED = "cancelled: the Run stream was closed by the client"
CANCEL_RPC = "cancelled by a Cancel request"


class GatewayServicer(gateway_pb2_grpc.GatewayServiceServicer):
    """Implements facegen.v1.GatewayService."""

    def __init__(self, manager: JobManager, upstreams: Upstreams, auth: Authenticator) -> None:
        self._manager = manager
        self._upstreams = upstreams
        self._auth = auth
        self._auth_failures = manager.metrics.auth_failures

    async def _authorize(self, context: grpc.aio.ServicerContext, rpc: str) -> None:
        """Sets ``caller_var`` to the caller's name, or ends the call with UNAUTHENTICATED (one WARNING line)."""
        try:
            caller_var.set(self._auth.caller(context.invocation_metadata()))
        except AuthenticationFailed as exc:
            self._auth_failures.labels(reason=exc.reason).inc()
            logs.event(log, "gateway.auth_failed", logging.WARNING, rpc=rpc, reason=exc, peer=context.peer())
            await context.abort(grpc.StatusCode.UNAUTHENTICATED,
                                "a valid 'authorization: Bearer <token>' metadata entry is required")

    async def Run(self, request: gateway_pb2.JobRequest,
                  context: grpc.aio.ServicerContext) -> AsyncIterator[gateway_pb2.JobEvent]:
        await self._authorize(context, "Run")
        job_id, _created = await self._manager.submit(request)
        try:
            async for event in self._manager.watch(job_id, 0):
                yield event
        except (asyncio.CancelledError, GeneratorExit):
            # The client went away. (A stream this gateway ends, e.g. on shutdown, leaves the job running.)
            self._manager.cancel_soon(job_id, RUN_CLOSED)
            raise

    async def Submit(self, request: gateway_pb2.JobRequest,
                     context: grpc.aio.ServicerContext) -> gateway_pb2.SubmitResponse:
        await self._authorize(context, "Submit")
        job_id, created = await self._manager.submit(request)
        return gateway_pb2.SubmitResponse(job_id=job_id, created=created)

    async def Watch(self, request: gateway_pb2.WatchRequest,
                    context: grpc.aio.ServicerContext) -> AsyncIterator[gateway_pb2.JobEvent]:
        await self._authorize(context, "Watch")
        with logs.job_context(request.job_id):
            async for event in self._manager.watch(request.job_id, request.after_seq):
                yield event

    async def Get(self, request: gateway_pb2.GetRequest,
                  context: grpc.aio.ServicerContext) -> gateway_pb2.Job:
        await self._authorize(context, "Get")
        with logs.job_context(request.job_id):
            return await self._manager.get(request.job_id)

    async def Cancel(self, request: gateway_pb2.CancelRequest,
                     context: grpc.aio.ServicerContext) -> gateway_pb2.CancelResponse:
        await self._authorize(context, "Cancel")
        with logs.job_context(request.job_id):
            state = await self._manager.cancel(request.job_id, CANCEL_RPC)
        return gateway_pb2.CancelResponse(state=state)

    async def ListModels(self, request: common_pb2.ListModelsRequest,
                         context: grpc.aio.ServicerContext) -> common_pb2.ListModelsResponse:
        await self._authorize(context, "ListModels")
        return await self._upstreams.list_models()
