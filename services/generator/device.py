"""Choosing the device and dtype, and recognising out-of-memory errors."""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch

from services.common.config import ConfigError

_DTYPES = {"float16": torch.float16, "bfloat16": torch.bfloat16, "float32": torch.float32}


@dataclass(frozen=True)
class Device:
    """Where pipelines run: ``cpu`` or ``cuda[:N]``."""

    name: str

    @property
    def is_cuda(self) -> bool:
        """True on an NVIDIA GPU."""
        return self.name.startswith("cuda")

    def dtype_for(self, catalog_dtype: str) -> torch.dtype:
        """The catalog's dtype on CUDA; float32 on a CPU, where half precision is slow or unsupported."""
        return _DTYPES[catalog_dtype] if self.is_cuda else torch.float32

    def describe(self) -> str:
        """A human name for logs: ``cuda:0 (NVIDIA H100)`` or ``cpu (8 threads)``."""
        if self.is_cuda:
            return f"{self.name} ({torch.cuda.get_device_name(torch.device(self.name))})"
        return f"cpu ({torch.get_num_threads()} threads)"


def resolve_device(setting: str) -> Device:
    """``auto`` picks CUDA when present, else the CPU; ``cuda`` without a GPU is a start-up error."""
    if setting == "auto":
        return Device("cuda" if torch.cuda.is_available() else "cpu")
    if setting.startswith("cuda") and not torch.cuda.is_available():
        raise ConfigError(f"GENERATOR_DEVICE={setting} but torch sees no CUDA device")
    return Device(setting)


def torch_threads(setting: int, device: Device) -> int | None:
    """The intra-op thread count to use: ``setting`` when positive; on a CPU, one per core but one.

    The spare core keeps the event loop, gRPC and PNG encoding from fighting
    torch's spinning worker threads, which on a busy 2-core machine made a
    tiny-model step several times slower than a single torch thread did.
    None leaves torch's default (on a GPU, CPU threads hardly matter).
    """
    if setting > 0:
        return setting
    if device.is_cuda:
        return None
    return max(1, len(os.sched_getaffinity(0)) - 1)


def use_torch_threads(setting: int, device: Device) -> None:
    """Sets torch's intra-op thread count as ``torch_threads`` chooses (leaves torch's default on a GPU)."""
    threads = torch_threads(setting, device)
    if threads is not None:
        torch.set_num_threads(threads)


def is_out_of_memory(exc: BaseException) -> bool:
    """True for the device running out of memory (CUDA, or an allocator failure on a CPU)."""
    if isinstance(exc, torch.OutOfMemoryError):
        return True
    return isinstance(exc, RuntimeError) and "out of memory" in str(exc).lower()


def release_cached_memory(device: Device) -> None:
    """Returns cached blocks to the driver after an OOM, so the next request starts clean."""
    if device.is_cuda:
        torch.cuda.empty_cache()
