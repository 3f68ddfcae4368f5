"""One queued generation request and the channel its events travel through.

Events are produced on the device thread (steps, previews) and on the event
loop (queue positions, images); ``emit`` is safe from either, and the gRPC
handler consumes them in order with ``events()``.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
import time
from collections.abc import AsyncIterator

from facegen.v1 import generator_pb2
from services.common import tracing
from services.generator.params import GenerationParams

_END = object()


class Job:
    """A request between submission and its last event."""

    def __init__(self, params: GenerationParams, loop: asyncio.AbstractEventLoop) -> None:
        self.params = params
        self.enqueued_at = time.monotonic()
        # Set from the event loop when the caller goes away; read by the device thread each step.
        self.cancelled = threading.Event()
        self.last_position: int | None = None
        # Denoising steps finished for this job (written by the device thread).
        self.progress = 0
        # ``progress`` when the caller cancelled, to check that the loop stopped within one step.
        self.cancelled_after_step: int | None = None
        self._loop = loop
        # Jobs are created on the event loop's thread; events emitted there skip the thread hop.
        self._loop_thread = threading.get_ident()
        self._events: asyncio.Queue[object] = asyncio.Queue()
        self._closed = False
        # The span of the call that asked for it (it is created in that call's context).
        self.span = tracing.current_span()

    @property
    def closed(self) -> bool:
        """True once the job ended (finished, failed or cancelled): nothing more is sent."""
        return self._closed

    def emit(self, event: generator_pb2.GenerateEvent) -> None:
        """Queues one event for the caller (from any thread)."""
        self._put(event)

    def finish(self) -> None:
        """Ends the event stream normally (after ``done``)."""
        self._put(_END, final=True)

    def fail(self, exc: BaseException) -> None:
        """Ends the event stream with ``exc``, which the handler raises (and the status table maps)."""
        self._put(exc, final=True)

    def cancel(self) -> None:
        """Marks the job cancelled: the denoising loop stops at the end of its current step."""
        if self.cancelled_after_step is None:
            self.cancelled_after_step = self.progress
        self.cancelled.set()
        self._closed = True

    async def events(self) -> AsyncIterator[generator_pb2.GenerateEvent]:
        """The job's events in order; raises the failure that ended it, if any."""
        while True:
            item = await self._events.get()
            if item is _END:
                return
            if isinstance(item, BaseException):
                raise item
            assert isinstance(item, generator_pb2.GenerateEvent)
            yield item

    def _put(self, item: object, final: bool = False) -> None:
        if self._closed:
            return
        if final:
            self._closed = True
        if threading.get_ident() == self._loop_thread:
            self._events.put_nowait(item)
            return
        # RuntimeError: the loop is closed, so the server is gone and so is the caller.
        with contextlib.suppress(RuntimeError):
            self._loop.call_soon_threadsafe(self._events.put_nowait, item)


def queued_event(position: int) -> generator_pb2.GenerateEvent:
    """``queued`` with the number of requests ahead."""
    return generator_pb2.GenerateEvent(queued=generator_pb2.QueuePosition(position=position))


def step_event(step: int, total: int, preview_png: bytes = b"") -> generator_pb2.GenerateEvent:
    """``step`` number ``step`` (1-based) of ``total``, with an optional preview."""
    return generator_pb2.GenerateEvent(
        step=generator_pb2.StepProgress(step=step, total_steps=total, preview_png=preview_png))


def image_event(index: int, png: bytes, width: int, height: int, seed: int) -> generator_pb2.GenerateEvent:
    """One final image."""
    return generator_pb2.GenerateEvent(image=generator_pb2.GeneratedImage(
        index=index, png=png, width=width, height=height, seed=seed))


def done_event(model: str, duration_ms: int, batch_size: int) -> generator_pb2.GenerateEvent:
    """The last event of a successful request."""
    return generator_pb2.GenerateEvent(done=generator_pb2.GenerateDone(
        model=model, duration_ms=duration_ms, batch_size=batch_size))
