"""The Swap and PutReference operations, independent of gRPC.

A swap stores the target image as a temporary object, runs the remote swap
(or does not: store-only, or no endpoint configured), stores the result (the
swapped image, or the original with the reason) and reports each step as a
``SwapEvent``. Whatever happens, including the caller cancelling, the
temporary object is deleted and nothing the swap started is left running
when it returns.
"""

from __future__ import annotations

import asyncio
import io
import logging
import re
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from PIL import Image

from facegen.v1 import common_pb2, swapper_pb2
from services.common import logs
from services.common.errors import InvalidInput, ResourceExhausted, Unavailable
from services.common.images import ImageInfo, ImageLimits, inspect_image, sanitize
from services.common.names import reason_name
from services.swapper.blocking import BlockingPool, CallScope
from services.swapper.fallback import DISABLED, SwapFallback
from services.swapper.remote import RemoteEvent, RemoteSwapper, Submitted, SwapInputs, SwapSuccess, finish
from services.swapper.settings import Settings
from services.swapper.storage import ObjectStore, result_key, temp_key

log = logging.getLogger(__name__)

EmitEvent = Callable[[swapper_pb2.SwapEvent], Awaitable[None]]

_JOB_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")
_REFERENCE_KEY = re.compile(r"^refs/[0-9a-f]{64}\.(?:jpg|png|webp)$")
# Time kept back from the caller's gRPC deadline to store the fallback and answer.
_RESERVE_S = 1.0
# Image metadata that may carry personal data (EXIF GPS, XMP, comments, PNG text).
_PERSONAL_METADATA = ("exif", "xmp", "XML:com.adobe.xmp", "comment")


@dataclass(frozen=True)
class CheckedImage:
    """Validated image bytes (metadata stripped when there was any) and what they are."""

    data: bytes
    info: ImageInfo


def check_image(data: bytes, field: str, limits: ImageLimits) -> CheckedImage:
    """Validates an image; re-encodes it only when it carries metadata or more than one picture."""
    info = inspect_image(data, field, limits)
    with Image.open(io.BytesIO(data)) as image:
        text = getattr(image, "text", None)
        has_metadata = any(key in image.info for key in _PERSONAL_METADATA) or bool(text)
    if has_metadata or info.multi_picture:
        clean, info = sanitize(data, field, limits)
        return CheckedImage(clean, info)
    return CheckedImage(data, info)


class Swapper:
    """Serves PutReference and Swap; ``store`` is set once storage is ready."""

    def __init__(self, settings: Settings, work_pool: BlockingPool, remote: RemoteSwapper | None,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.settings = settings
        self.work_pool = work_pool
        self.remote = remote
        self.store: ObjectStore | None = None
        self.not_ready_reason = "storage is being checked"
        self._clock = clock
        self.in_flight = 0

    def _ready_store(self) -> ObjectStore:
        if self.store is None:
            raise Unavailable(f"the swapper is not ready: {self.not_ready_reason}")
        return self.store

    async def put_reference(self, job_id: str, image: bytes) -> tuple[str, bool]:
        """Stores a reference face under its content address; returns (key, deduplicated)."""
        store = self._ready_store()
        with logs.job_context(job_id or "-"):
            checked = await self.work_pool.run(check_image, image, "image", self.settings.target_limits)
            key, deduplicated = await store.put_reference(checked.data, checked.info.mime)
            logs.event(log, "swap.reference_stored", key=key, deduplicated=deduplicated)
            return key, deduplicated

    async def swap(self, request: swapper_pb2.SwapRequest, emit: EmitEvent,
                   time_remaining: float | None = None) -> None:
        """Runs one swap, sending every event through ``emit``; ends with exactly one result event.

        Raises InvalidInput, NotFound, ResourceExhausted or Unavailable
        (storage) before or instead of a result; never a half-made result.
        """
        store = self._ready_store()
        _check_request(request)
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
        target = await scope.run(self.work_pool, check_image, request.target_image, "target_image",
                                 self.settings.target_limits)
        if request.reference_key:
            await store.require_reference(request.reference_key)
        key = temp_key(request.job_id, request.image_index, target.info.mime)
        # A failed upload leaves nothing to delete (a half-made one is the lifecycle rule's).
        target_url = await store.put_temp(key, target.data, target.info.mime)
        deleting: asyncio.Future[bool] | None = None
        try:
            logs.event(log, "swap.stored", key=key, bytes=len(target.data))
            await emit(swapper_pb2.SwapEvent(stored=swapper_pb2.SwapStored(key=key)))
            outcome = await self._run_remote(store, request, target_url, deadline, emit, scope)
            # The inputs are no longer needed: delete while the result is being stored.
            deleting = store.start_delete_temp(key)
            result = await self._store_result(store, request, target, outcome)
            logs.event(log, "swap.result", key=result.key, method=common_pb2.FaceSwapMethod.Name(result.method),
                       reason=reason_name(result.fallback_reason) if result.fallback_reason else "-",
                       message=result.fallback_message, elapsed_ms=int((self._clock() - started) * 1000))
            await emit(swapper_pb2.SwapEvent(result=result))
        finally:
            await finish(self._clean_up(store, key, deleting, scope))

    async def _run_remote(self, store: ObjectStore, request: swapper_pb2.SwapRequest, target_url: str,
                          deadline: float, emit: EmitEvent, scope: CallScope) -> SwapSuccess | SwapFallback:
        if not request.reference_key:
            return SwapFallback(DISABLED, "no reference face was given: the image was stored without a swap")
        if self.remote is None:
            return SwapFallback(DISABLED, "no face-swap endpoint is configured (FACE_SWAP_ENDPOINT)")
        inputs = SwapInputs(
            source_url=await store.reference_url(request.reference_key, deadline - self._clock() + 60),
            target_url=target_url,
            mouth_mask=request.options.mouth_mask,
            use_face_enhancer=request.options.use_face_enhancer,
            many_faces=request.options.many_faces,
        )

        async def forward(event: RemoteEvent) -> None:
            if isinstance(event, Submitted):
                await emit(swapper_pb2.SwapEvent(submitted=swapper_pb2.SwapSubmitted(
                    remote_job_id=event.job_id, endpoint=event.endpoint)))
            else:
                await emit(swapper_pb2.SwapEvent(remote_status=common_pb2.RemoteJobStatus(
                    remote_job_id=event.job_id, endpoint=event.endpoint, status=event.status,
                    delay_time_ms=event.delay_ms, execution_time_ms=event.execution_ms)))

        try:
            return await self.remote.swap(inputs, deadline, forward, scope)
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
        return result

    async def _clean_up(self, store: ObjectStore, key: str, deleting: asyncio.Future[bool] | None,
                        scope: CallScope) -> None:
        await (deleting if deleting is not None else store.start_delete_temp(key))
        limit = self.settings.runpod.http_timeout_s + self.settings.runpod.status_wait_ms / 1000 + 1
        if not await scope.drain(limit):
            logs.event(log, "swap.leftover_calls", logging.WARNING, pending=scope.pending)


def _check_request(request: swapper_pb2.SwapRequest) -> None:
    if not _JOB_ID.match(request.job_id):
        raise InvalidInput("job_id must be 1-128 characters: letters, digits, '.', '_' or '-', "
                           "starting with a letter or digit")
    if request.image_index < 0 or request.image_index > 1000:
        raise InvalidInput(f"image_index is {request.image_index}; it must be between 0 and 1000")
    if request.deadline_ms < 0:
        raise InvalidInput(f"deadline_ms is {request.deadline_ms}; it must be 0 (the default) or positive")
    if request.reference_key and not _REFERENCE_KEY.match(request.reference_key):
        raise InvalidInput("reference_key must be a key returned by PutReference "
                           "(refs/<sha256>.<jpg|png|webp>)")
