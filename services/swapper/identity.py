"""The identity check (``FACE_SWAP_VERIFY=identity``): is the face in a result the reference person's?

dlib's face descriptor (``services/identity``, the ``identity`` extra) of the largest face in the
reference photo, and of the largest face where the result differs from the target (the region the
unchanged check found, with a margin; the whole result when there is none); their distance is
compared with ``FACE_SWAP_IDENTITY_THRESHOLD`` by the caller.

The descriptors are computed in child processes: dlib holds the GIL for the ~65 ms of a
descriptor, which in a thread would stall every other swap on the event loop. Reference keys are
content-addressed, so a reference's descriptor is computed once and cached by key. Nothing here
raises for a face it cannot measure (dlib finds no frontal face, the process died, time ran out):
the answer says why, and the result is delivered unmeasured.

The child's functions import numpy and dlib themselves: this module is imported by every swapper,
whose default image has neither.
"""

from __future__ import annotations

import asyncio
import io
import logging
import multiprocessing
from collections import OrderedDict
from collections.abc import Awaitable, Callable
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass
from typing import Any, TypeVar

from PIL import Image

from services.common import logs
from services.identity import descriptor_distance

log = logging.getLogger(__name__)

T = TypeVar("T")
Region = tuple[int, int, int, int]

# Pictures are measured at most this large (longest side): dlib's detector slows with the square of
# the side, and a face needs no more than ~150 px for its descriptor.
MAX_SIDE = 800
# The changed region is the inner face (the worker blends inside the face outline): widen it by
# this much of its size on every side so the detector sees the whole head.
MARGIN = 0.6
REFERENCE_CACHE = 1024


@dataclass(frozen=True)
class Measured:
    """A face's descriptor, or why there is none."""

    descriptor: tuple[float, ...] | None
    why_not: str = ""


@dataclass(frozen=True)
class Identity:
    """d(reference, result), or why it was not measured."""

    distance: float | None
    why_not: str = ""


class IdentityCheck:
    """Measures d(reference, result) in ``processes`` child processes (spawned, models loaded once each)."""

    def __init__(self, processes: int = 1) -> None:
        self.processes = processes
        self._executor: ProcessPoolExecutor | None = None
        self._references: OrderedDict[str, Measured] = OrderedDict()
        self._pending: dict[str, asyncio.Future[Measured]] = {}

    async def start(self) -> None:
        """Starts the processes and loads the models in each; RuntimeError with the reason when they cannot."""
        try:
            await asyncio.gather(*(self._run(_ready) for _ in range(self.processes)))
        except _ProcessDied as exc:
            raise RuntimeError(f"the identity check cannot start: {exc}") from None

    async def measure(self, reference_key: str, load_reference: Callable[[], Awaitable[bytes | None]],
                      result: bytes, region: Region | None, time_left_s: float) -> Identity:
        """d(reference, result) within ``time_left_s``, or why not; ``region``: where the result changed."""
        if time_left_s <= 0:
            return Identity(None, "no time was left before the swap's deadline")
        try:
            async with asyncio.timeout(time_left_s):
                reference = await self._reference(reference_key, load_reference)
                if reference.descriptor is None:
                    return Identity(None, reference.why_not)
                measured = await self._run(_result_descriptor, result, region)
        except TimeoutError:
            return Identity(None, f"the identity check did not finish within the {time_left_s:.1f} s left "
                                  "before the swap's deadline")
        except _ProcessDied as exc:
            return Identity(None, str(exc))
        if measured.descriptor is None:
            return Identity(None, measured.why_not)
        return Identity(descriptor_distance(reference.descriptor, measured.descriptor))

    async def _reference(self, key: str, load: Callable[[], Awaitable[bytes | None]]) -> Measured:
        """The reference's descriptor: cached, or computed once however many swaps ask at the same time."""
        if key in self._references:
            self._references.move_to_end(key)
            return self._references[key]
        pending = self._pending.get(key)
        if pending is None:
            pending = asyncio.ensure_future(self._measure_reference(key, load))
            self._pending[key] = pending
            pending.add_done_callback(lambda done: self._settled(key, done))
        # One caller's deadline must not cancel the measurement the others wait for.
        return await asyncio.shield(pending)

    def _settled(self, key: str, done: asyncio.Future[Measured]) -> None:
        self._pending.pop(key, None)
        if not done.cancelled():
            done.exception()  # retrieved here: every caller may have gone (their deadline passed)

    async def _measure_reference(self, key: str, load: Callable[[], Awaitable[bytes | None]]) -> Measured:
        data = await load()
        if data is None:
            return Measured(None, f"the reference {key} is no longer in storage")
        measured = await self._run(_reference_descriptor, data)
        self._references[key] = measured
        while len(self._references) > REFERENCE_CACHE:
            self._references.popitem(last=False)
        return measured

    async def _run(self, fn: Callable[..., T], *args: Any) -> T:
        if self._executor is None:
            self._executor = ProcessPoolExecutor(max_workers=self.processes,
                                                 mp_context=multiprocessing.get_context("spawn"),
                                                 initializer=_load_models)
        executor = self._executor
        try:
            return await asyncio.get_running_loop().run_in_executor(executor, fn, *args)
        except BrokenProcessPool as exc:
            if self._executor is executor:  # the next call starts fresh processes
                self._executor = None
                executor.shutdown(wait=False, cancel_futures=True)
                logs.event(log, "identity.process_died", logging.ERROR, message=str(exc))
            raise _ProcessDied(f"the identity check's process ended unexpectedly ({exc})") from None

    def close(self) -> None:
        """Stops the processes (blocking: waits for a measurement in progress)."""
        if self._executor is not None:
            self._executor.shutdown(wait=True, cancel_futures=True)
            self._executor = None


class _ProcessDied(Exception):
    pass


# --- in the child processes -------------------------------------------------------------------------

_metric: Any = None


def _load_models() -> None:
    global _metric
    from services.identity.descriptor import IdentityMetric

    _metric = IdentityMetric()


def _ready() -> bool:
    return _metric is not None


def _reference_descriptor(data: bytes) -> Measured:
    return _descriptor(data, None, "the reference photo")


def _result_descriptor(data: bytes, region: Region | None) -> Measured:
    return _descriptor(data, region, "the result where it differs from the target" if region else "the result")


def _descriptor(data: bytes, region: Region | None, what: str) -> Measured:
    import numpy as np

    try:
        with Image.open(io.BytesIO(data)) as opened:
            picture = opened.convert("RGB")
        if region is not None:
            picture = picture.crop(_widened(region, picture.size))
        picture.thumbnail((MAX_SIDE, MAX_SIDE), Image.Resampling.BOX)
        vector = _metric.descriptor(np.asarray(picture))
    except Exception as exc:  # a picture dlib cannot take: unmeasured, with the reason
        return Measured(None, f"{what} could not be measured: {type(exc).__name__}: {exc}")
    if vector is None:
        return Measured(None, f"dlib finds no frontal face in {what}")
    return Measured(tuple(float(value) for value in vector))


def _widened(region: Region, size: tuple[int, int]) -> Region:
    left, top, right, bottom = region
    pad = round(MARGIN * max(right - left, bottom - top))
    return max(0, left - pad), max(0, top - pad), min(size[0], right + pad), min(size[1], bottom + pad)
