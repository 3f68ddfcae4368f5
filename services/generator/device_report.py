"""What the device tells the engine after each command: models and adapters in memory, loads, GPU memory."""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(frozen=True)
class DeviceReport:
    """The device's state after a command (picklable: it crosses from the device process)."""

    # Model name -> the LoRA adapters attached to it, for every model in memory.
    loaded: dict[str, tuple[str, ...]] = field(default_factory=dict)
    # (model, seconds) for each model loaded since the last report.
    loads: tuple[tuple[str, float], ...] = ()
    # (allocated, reserved) bytes on a CUDA device; None on a CPU.
    memory: tuple[int, int] | None = None
