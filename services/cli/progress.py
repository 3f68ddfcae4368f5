"""Rendering a job's event stream for people (progress bars) and for scripts (JSON lines)."""

from __future__ import annotations

import json
import sys
from typing import TextIO

from google.protobuf import json_format

from facegen.v1 import common_pb2, gateway_pb2
from services.common.names import method_name, reason_name, stage_name

BAR_WIDTH = 30


def event_json(event: gateway_pb2.JobEvent) -> str:
    """One JSON line for ``event``; preview images are left out (they are bytes)."""
    slim = gateway_pb2.JobEvent()
    slim.CopyFrom(event)
    slim.denoise.ClearField("preview_png")
    if not event.HasField("denoise"):
        slim.ClearField("denoise")
    return json.dumps(json_format.MessageToDict(slim, preserving_proto_field_name=True), separators=(",", ":"))


class ProgressView:
    """Shows events as a live progress bar on a terminal, or as plain lines elsewhere.

    On a terminal the bar line is redrawn in place; elsewhere (CI logs, pipes)
    a line is printed only when something worth reading changes: a new stage,
    every quarter of the denoising steps, a remote status change, an image done.
    """

    def __init__(self, out: TextIO = sys.stderr, tty: bool | None = None) -> None:
        self.out = out
        self.tty = out.isatty() if tty is None else tty
        self._last_key: tuple[object, ...] = ()
        self._bar_drawn = False

    def show(self, event: gateway_pb2.JobEvent) -> None:
        """Renders one event."""
        line = self._line(event)
        if self.tty:
            self.out.write("\r\x1b[2K" + line)
            self._bar_drawn = True
            if event.stage == gateway_pb2.STAGE_TERMINAL or event.HasField("image"):
                self.out.write("\n")
                self._bar_drawn = False
        else:
            key = self._key(event)
            if key != self._last_key:
                self.out.write(line + "\n")
                self._last_key = key
        self.out.flush()

    def close(self) -> None:
        """Ends a bar left drawn on the terminal."""
        if self._bar_drawn:
            self.out.write("\n")
            self.out.flush()
            self._bar_drawn = False

    @staticmethod
    def _key(event: gateway_pb2.JobEvent) -> tuple[object, ...]:
        quarter = 0
        if event.HasField("denoise") and event.denoise.total_steps:
            quarter = (4 * event.denoise.step) // event.denoise.total_steps
        remote = (event.remote.remote_job_id, event.remote.status) if event.HasField("remote") else ()
        image = event.image.index if event.HasField("image") else None
        return (event.stage, quarter, remote, image, event.queue_position)

    @staticmethod
    def _line(event: gateway_pb2.JobEvent) -> str:
        filled = int(BAR_WIDTH * min(max(event.percent, 0.0), 100.0) / 100)
        bar = "#" * filled + "-" * (BAR_WIDTH - filled)
        parts = [f"[{bar}] {event.percent:5.1f}% {stage_name(event.stage):<10}"]
        if event.HasField("denoise"):
            parts.append(f"step {event.denoise.step}/{event.denoise.total_steps}")
        if event.HasField("remote"):
            remote = event.remote
            timing = f" queue {remote.delay_time_ms} ms" if remote.delay_time_ms else ""
            timing += f" run {remote.execution_time_ms} ms" if remote.execution_time_ms else ""
            parts.append(f"image {event.image_index}: runpod {remote.status or 'submitted'}{timing}")
        if event.queue_position:
            parts.append(f"queue position {event.queue_position}")
        if event.message:
            parts.append(f"- {event.message}")
        return " ".join(parts)


def describe_result(result: gateway_pb2.JobResult) -> list[str]:
    """Human lines for a terminal result: one per image and per failure."""
    lines = []
    for image in result.images:
        how = (f"face swap: {method_name(image.face_swap_method)}"
               if image.face_swap_method not in (common_pb2.FACE_SWAP_METHOD_NONE,
                                                 common_pb2.FACE_SWAP_METHOD_UNSPECIFIED)
               else f"no face swap ({reason_name(image.fallback_reason)}): {image.fallback_message}")
        if image.HasField("identity_distance"):
            how += f" (identity distance {image.identity_distance:.2f}; under 0.6 is the same person)"
        seed = f" seed {image.seed}" if image.seed >= 0 else ""
        lines.append(f"image {image.index} {image.width}x{image.height}{seed} — {how}\n  {image.url}")
    for failure in result.failures:
        lines.append(f"image {failure.index} FAILED ({failure.code}): {failure.message}")
    return lines
