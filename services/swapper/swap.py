"""The swapper's operations, independent of gRPC: Swap, PutReference, CheckReference, PutTarget, CancelSwap.

A swap stores the target image as a temporary object (or finds it stored),
runs the remote swap (or does not: store-only, or no endpoint configured),
checks what came back (``verify.py``: is it the target unchanged, is it the
reference person), stores the result (the swapped image, or the original
with the reason) and
reports each step as a ``SwapEvent``. When it ends, nothing it started is
left running and its temporary object is deleted, except for a resumable
swap that did not finish (its caller left, or storage failed): its target
and record stay for the next call, which follows the same remote job.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncGenerator, Awaitable, Callable
from dataclasses import dataclass

from opentelemetry.trace import Span

from facegen.v1 import common_pb2, swapper_pb2
from services.common import logs, tracing
from services.common.errors import FailedPrecondition, NotFound, ResourceExhausted, Unavailable
from services.common.names import reason_name
from services.swapper.blocking import BlockingPool, CallScope
from services.swapper.fallback import DISABLED, SwapFallback
from services.swapper.handoff import handed_over
from services.swapper.inputs import CheckedImage, check_image, check_job, check_reference_key, check_swap_request
from services.swapper.jobs import CallerGone, RemoteEvent, RemoteJob, Submitted, SwapInputs, SwapSuccess
from services.swapper.keys import result_key, temp_key
from services.swapper.records import SUBMITTED, SwapRecords
from services.swapper.remote import RemoteSwapper, finish
from services.swapper.resume import Resumable, Submit
from services.swapper.settings import Settings
from services.swapper.storage import ObjectStore
from services.swapper.verify import ResultChecks

log = logging.getLogger(__name__)

EmitEvent = Callable[[swapper_pb2.SwapEvent], Awaitable[None]]

# Time kept back from the caller's gRPC deadline to store the fallback and answer.
_RESERVE_S = 1.0


@dataclass(frozen=True)
class _Target:
    key: str
    url: str
    image: CheckedImage


class Swapper:
    """Serves the operations; ``store`` is set once storage is ready, ``records`` when Redis is configured."""

    def __init__(self, settings: Settings, work_pool: BlockingPool, remote: RemoteSwapper | None,
                 records: SwapRecords | None = None, clock: Callable[[], float] = time.monotonic,
                 checks: ResultChecks | None = None) -> None:
        self.settings = settings
        self.work_pool = work_pool
        self.remote = remote
        self.records = records
        self.checks = checks or ResultChecks(settings.checks, work_pool)
        self.store: ObjectStore | None = None
        self.not_ready_reason = "storage is being checked"
        self._clock = clock
        self.in_flight = 0

    def _ready_store(self) -> ObjectStore:
        if self.store is None:
            raise Unavailable(f"the swapper is not ready: {self.not_ready_reason}")
        return self.store

    def _ready_records(self, what: str) -> SwapRecords:
        if self.records is None:
            raise FailedPrecondition(f"{what} needs the swapper to keep swap records in Redis, and it has no "
                                     "REDIS_URL")
        return self.records

    async def put_reference(self, job_id: str, image: bytes) -> tuple[str, bool]:
        """Stores a reference face under its content address; returns (key, deduplicated)."""
        store = self._ready_store()
        with logs.job_context(job_id or "-"):
            checked = await self.work_pool.run(check_image, image, "image", self.settings.target_limits)
            key, deduplicated = await store.put_reference(checked.data, checked.info.mime)
            logs.event(log, "swap.reference_stored", key=key, deduplicated=deduplicated)
            return key, deduplicated

    async def check_reference(self, job_id: str, key: str) -> None:
        """INVALID_ARGUMENT for a malformed key, NOT_FOUND unless the reference is stored (a HEAD, cached)."""
        check_reference_key(key)
        with logs.job_context(job_id or "-"):
            await self._ready_store().require_reference(key)

    async def put_target(self, job_id: str, index: int, image: bytes) -> str:
        """Stores a job's target image as the temporary object a later Swap reads through ``target_key``."""
        check_job(job_id, index)
        store = self._ready_store()
        with logs.job_context(job_id):
            checked = await self.work_pool.run(check_image, image, "image", self.settings.target_limits)
            key = temp_key(job_id, index, checked.info.mime)
            await store.put_temp(key, checked.data, checked.info.mime)
            logs.event(log, "swap.target_stored", key=key, bytes=len(checked.data))
            return key

    async def cancel_swap(self, job_id: str, index: int) -> bool:
        """Ends a resumable swap nobody follows: one ``/cancel`` for its job, its target deleted. Idempotent."""
        check_job(job_id, index)
        records = self._ready_records("CancelSwap")
        store = self._ready_store()
        with logs.job_context(job_id):
            before = await records.cancel(job_id, index, self.settings.runpod.deadline_s)
            cancelled = False
            if before is not None and before.state == SUBMITTED and self.remote is not None:
                endpoint = self.remote.endpoint(before.endpoint)
                if endpoint is not None:
                    cancelled = await self.remote.cancel(RemoteJob(endpoint, before.remote_job_id))
            if before is not None and before.target_key:
                await store.start_delete_temp(before.target_key)
            logs.event(log, "swap.cancelled", index=index, state=before.state if before else "-",
                       remote_cancelled=cancelled)
            return cancelled

    def events(self, request: swapper_pb2.SwapRequest,
               time_remaining: float | None = None) -> AsyncGenerator[swapper_pb2.SwapEvent, None]:
        """``swap`` as an async generator of its events (each one sent before the swap goes on)."""
        return handed_over(lambda emit: self.swap(request, emit, time_remaining),
                           lambda: CallerGone("the caller went away"))

    async def swap(self, request: swapper_pb2.SwapRequest, emit: EmitEvent,
                   time_remaining: float | None = None) -> None:
        """Runs one swap, sending every event through ``emit``; ends with exactly one result event.

        Raises InvalidInput, NotFound, FailedPrecondition, ResourceExhausted or
        Unavailable (storage, Redis) before or instead of a result; never a
        half-made result.
        """
        store = self._ready_store()
        check_swap_request(request)
        emit = _delivering(emit, tracing.current_span())
        if request.resumable:
            self._ready_records("a resumable swap")
        if self.in_flight >= self.settings.max_in_flight:
            raise ResourceExhausted(f"the swapper is running {self.in_flight} swaps, its limit "
                                    "(SWAPPER_MAX_IN_FLIGHT); retry later")
        self.in_flight += 1
        try:
            with logs.job_context(request.job_id):
                await self._swap(store, request, emit, self._deadline_s(request, time_remaining))
        finally:
            self.in_flight -= 1

    def _deadline_s(self, request: swapper_pb2.SwapRequest, time_remaining: float | None) -> float:
        seconds = request.deadline_ms / 1000 if request.deadline_ms > 0 else self.settings.runpod.deadline_s
        # The worker fetches its inputs until the deadline: they must stay readable that long.
        seconds = min(seconds, float(self.settings.storage.temp_presign_expiry_s))
        if time_remaining is not None:
            seconds = min(seconds, max(0.0, time_remaining - _RESERVE_S))
        return seconds

    async def _swap(self, store: ObjectStore, request: swapper_pb2.SwapRequest, emit: EmitEvent,
                    budget_s: float) -> None:
        started = self._clock()
        deadline = started + budget_s
        scope = CallScope()
        resumable = None
        if request.resumable:
            assert self.records is not None
            resumable = await Resumable.load(self.records, request.job_id, request.image_index, budget_s)
        target = await self._target(store, request, resumable, scope)
        deleting: asyncio.Future[bool] | None = None
        finished = False
        try:
            logs.event(log, "swap.stored", key=target.key, bytes=len(target.image.data))
            await emit(swapper_pb2.SwapEvent(stored=swapper_pb2.SwapStored(key=target.key)))
            outcome = await self._run_remote(store, request, target, deadline, emit, scope, resumable)
            if resumable is None:
                # The inputs are no longer needed: delete while the result is being stored.
                deleting = store.start_delete_temp(target.key)
            result = await self._store_result(store, request, target.image, outcome)
            finished = True
            logs.event(log, "swap.result", key=result.key, method=common_pb2.FaceSwapMethod.Name(result.method),
                       reason=reason_name(result.fallback_reason) if result.fallback_reason else "-",
                       message=result.fallback_message, elapsed_ms=int((self._clock() - started) * 1000))
            await emit(swapper_pb2.SwapEvent(result=result))
        finally:
            await finish(self._clean_up(store, target.key, deleting, scope, resumable, finished))

    async def _target(self, store: ObjectStore, request: swapper_pb2.SwapRequest, resumable: Resumable | None,
                      scope: CallScope) -> _Target:
        """The checked target and its URL: stored now, or by an earlier call (``target_key``, the record)."""
        limits = self.settings.target_limits
        stored = request.target_key or (resumable.stored_target if resumable is not None else "")
        data = request.target_image
        if request.target_key:
            loaded = await store.get(request.target_key)
            if loaded is None:
                raise NotFound(f"target_key {request.target_key!r} does not exist in storage (the swap ended, "
                               "or it expired); send the target image again")
            data = loaded
        # A target that goes to an endpoint is fingerprinted from this decoding, for the unchanged check.
        fingerprint = bool(request.reference_key) and self.remote is not None and self.checks.wants_fingerprint
        image = await scope.run(self.work_pool, check_image, data, "target_image", limits, fingerprint)
        if request.reference_key:
            await store.require_reference(request.reference_key)
        if stored:
            if resumable is not None and stored != resumable.stored_target:
                await resumable.note_target(stored)
            return _Target(stored, await store.temp_url(stored), image)
        key = temp_key(request.job_id, request.image_index, image.info.mime)
        # A failed upload leaves nothing to delete (a half-made one is the lifecycle rule's).
        url = await store.put_temp(key, image.data, image.info.mime)
        if resumable is not None:
            try:
                await resumable.note_target(key)
            except Unavailable:
                await store.start_delete_temp(key)
                raise
        return _Target(key, url, image)

    async def _run_remote(self, store: ObjectStore, request: swapper_pb2.SwapRequest, target: _Target,
                          deadline: float, emit: EmitEvent, scope: CallScope,
                          resumable: Resumable | None) -> SwapSuccess | SwapFallback:
        if not request.reference_key:
            return SwapFallback(DISABLED, "no reference face was given: the image was stored without a swap")
        if self.remote is None:
            return SwapFallback(DISABLED, "no face-swap endpoint is configured (FACE_SWAP_ENDPOINT)")
        inputs = SwapInputs(
            source_url=await store.reference_url(request.reference_key, deadline - self._clock() + 60),
            target_url=target.url,
            mouth_mask=request.options.mouth_mask,
            use_face_enhancer=request.options.use_face_enhancer,
            many_faces=request.options.many_faces,
        )

        async def forward(event: RemoteEvent) -> None:
            if isinstance(event, Submitted):
                await emit(swapper_pb2.SwapEvent(submitted=swapper_pb2.SwapSubmitted(
                    remote_job_id=event.job_id, endpoint=event.endpoint, resumed=event.resumed)))
            else:
                await emit(swapper_pb2.SwapEvent(remote_status=common_pb2.RemoteJobStatus(
                    remote_job_id=event.job_id, endpoint=event.endpoint, status=event.status,
                    delay_time_ms=event.delay_ms, execution_time_ms=event.execution_ms)))

        try:
            resume = None
            if resumable is not None:
                decision = await resumable.decide(self.remote, self.settings.runpod.http_timeout_s + 1)
                if isinstance(decision, SwapFallback):
                    raise decision
                resume = None if isinstance(decision, Submit) else decision
            success = await self.remote.swap(inputs, deadline, forward, scope, journal=resumable, resume=resume)
            return await self.checks.verify(target.image, success, request.reference_key,
                                            lambda: store.get(request.reference_key), deadline - self._clock(), scope)
        except SwapFallback as fallback:
            logs.event(log, "swap.fallback", logging.WARNING, reason=fallback.reason_name,
                       message=fallback.message)
            return fallback

    async def _store_result(self, store: ObjectStore, request: swapper_pb2.SwapRequest,
                            target: CheckedImage, outcome: SwapSuccess | SwapFallback) -> swapper_pb2.SwapResult:
        if isinstance(outcome, SwapSuccess):
            data, info, swapped = outcome.data, outcome.info, True
        else:
            data, info, swapped = target.data, target.info, False
        key = result_key(request.job_id, request.image_index, swapped, info.mime)
        url = await store.put_result(key, data, info.mime)
        result = swapper_pb2.SwapResult(url=url, key=key, content_type=info.mime,
                                        width=info.width, height=info.height)
        if isinstance(outcome, SwapSuccess):
            result.method = common_pb2.FACE_SWAP_METHOD_EXTERNAL_API
        else:
            result.method = common_pb2.FACE_SWAP_METHOD_NONE
            result.fallback_reason = outcome.reason  # type: ignore[assignment]
            result.fallback_message = outcome.message
        if outcome.identity_distance is not None:
            result.identity_distance = outcome.identity_distance
        return result

    async def _clean_up(self, store: ObjectStore, key: str, deleting: asyncio.Future[bool] | None,
                        scope: CallScope, resumable: Resumable | None, finished: bool) -> None:
        if resumable is None or finished:
            await (deleting if deleting is not None else store.start_delete_temp(key))
        if resumable is not None and finished:
            await resumable.forget()
        limit = self.settings.runpod.http_timeout_s + self.settings.runpod.status_wait_ms / 1000 + 1
        if not await scope.drain(limit):
            logs.event(log, "swap.leftover_calls", logging.WARNING, pending=scope.pending)


def _delivering(emit: EmitEvent, span: Span) -> EmitEvent:
    """``emit``, with a failed delivery (the call already ended) raised as ``CallerGone``; each event is
    also an event of the call's span (when it is traced)."""

    async def deliver(event: swapper_pb2.SwapEvent) -> None:
        if span.is_recording():
            kind = event.WhichOneof("event")
            span.add_event(f"swap.{kind}", _attributes(event, kind))
        try:
            await emit(event)
        except Exception as exc:
            raise CallerGone(f"the caller went away ({type(exc).__name__})") from exc

    return deliver


def _attributes(event: swapper_pb2.SwapEvent, kind: str | None) -> dict[str, str | int | bool]:
    if kind == "stored":
        return {"key": event.stored.key}
    if kind == "submitted":
        return {"remote_job_id": event.submitted.remote_job_id, "endpoint": event.submitted.endpoint,
                "resumed": event.submitted.resumed}
    if kind == "remote_status":
        status = event.remote_status
        return {"status": status.status, "delay_ms": status.delay_time_ms, "execution_ms": status.execution_time_ms}
    if kind == "result":
        result = event.result
        return {"method": common_pb2.FaceSwapMethod.Name(result.method),
                "fallback_reason": reason_name(result.fallback_reason) if result.fallback_reason else "-"}
    return {}
