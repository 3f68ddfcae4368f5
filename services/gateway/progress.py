"""Overall percent of a job from a fixed weighting of its stages, never going backwards.

Generation (with the reference upload running beside it) fills 0-70 by
denoising steps, swapping fills 70-95 by how far each image has got, and
finalizing fills 95-100. A template job generates nothing, so swapping fills
0-95 instead.
"""

from __future__ import annotations

import time

from facegen.v1 import gateway_pb2

GENERATION_END = 70.0
SWAPPING_END = 95.0
DONE = 100.0

# How far one image's swap has got when the swapper reports each event.
SWAP_FRACTION = {
    "stored": 0.2,
    "submitted": 0.35,
    "IN_QUEUE": 0.45,
    "IN_PROGRESS": 0.6,
    # The remote job ended; the result is being decoded and stored.
    "COMPLETED": 0.8,
    "FAILED": 0.8,
    "CANCELLED": 0.8,
    "TIMED_OUT": 0.8,
    "result": 1.0,
}


class Progress:
    """Tracks one job's progress; ``percent`` only ever grows."""

    def __init__(self, num_images: int, template_mode: bool, floor: float = 0.0) -> None:
        """``floor``: the percent already shown (a resumed job continues from there)."""
        self._num_images = max(1, num_images)
        self._generation_end = 0.0 if template_mode else GENERATION_END
        self._generation = 0.0
        self._images = [0.0] * self._num_images
        self._floor = 0.0
        self._shown = floor

    def step(self, step: int, total: int) -> None:
        """A denoising step finished."""
        if total > 0:
            self._generation = max(self._generation, min(1.0, step / total))

    def generation_done(self) -> None:
        """Every image was generated."""
        self._generation = 1.0

    def image(self, index: int, fraction: float) -> None:
        """Image ``index`` has got ``fraction`` (0..1) of the way through its swap."""
        if 0 <= index < self._num_images:
            self._images[index] = max(self._images[index], min(1.0, fraction))

    def swap_event(self, index: int, what: str) -> None:
        """Advances image ``index`` for a swapper event (a key of SWAP_FRACTION)."""
        self.image(index, SWAP_FRACTION.get(what, 0.0))

    def finalizing(self) -> None:
        """Every image is done; the result is being assembled."""
        self._floor = max(self._floor, SWAPPING_END)

    def done(self) -> None:
        """The job completed."""
        self._floor = DONE

    @property
    def percent(self) -> float:
        """Overall progress 0..100, never lower than any value returned before."""
        swap_span = SWAPPING_END - self._generation_end
        value = (self._generation_end * self._generation
                 + swap_span * sum(self._images) / self._num_images)
        self._shown = max(self._shown, value, self._floor)
        return round(self._shown, 2)


class StageClock:
    """Wall-clock span of each stage: first start to last end (stages overlap in a pipeline)."""

    def __init__(self) -> None:
        self._spans: dict[gateway_pb2.Stage, list[float]] = {}

    def start(self, stage: gateway_pb2.Stage) -> None:
        """Marks the start of some work of ``stage`` (only the first start counts)."""
        now = time.monotonic()
        span = self._spans.setdefault(stage, [now, now])
        span[0] = min(span[0], now)

    def record(self, stage: gateway_pb2.Stage, seconds: float) -> None:
        """Records ``seconds`` of ``stage`` that ended now (a span measured elsewhere)."""
        now = time.monotonic()
        self._spans[stage] = [now - max(0.0, seconds), now]

    def stop(self, stage: gateway_pb2.Stage) -> None:
        """Marks the end of some work of ``stage`` (the last end counts)."""
        now = time.monotonic()
        span = self._spans.setdefault(stage, [now, now])
        span[1] = max(span[1], now)

    def timings(self) -> list[gateway_pb2.StageTiming]:
        """One StageTiming per stage seen, in stage order."""
        return [gateway_pb2.StageTiming(stage=stage, duration_ms=round((end - start) * 1000))
                for stage, (start, end) in sorted(self._spans.items())]
