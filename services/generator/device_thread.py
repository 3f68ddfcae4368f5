"""Where pipeline calls run: the interface, and its in-process form (one device thread).

The engine queues and batches on the event loop and hands each batch to a
``DeviceRunner``, which runs model loads and pipeline calls one at a time.
``ThreadRunner`` runs them on one thread of this process; ``ProcessRunner``
(``device_process.py``, the default) in a child process, so that the gRPC
server's work never competes with the pipeline for this process's GIL.
"""

from __future__ import annotations

import asyncio
import contextvars
import functools
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Protocol, TypeVar

from services.generator.catalog import Catalog
from services.generator.device import Device, use_torch_threads
from services.generator.device_report import DeviceReport
from services.generator.jobs import Job
from services.generator.pipelines import PipelineRegistry
from services.generator.runner import BatchOutput, run_batch, warm_up
from services.generator.settings import Settings

T = TypeVar("T")


class DeviceRunner(Protocol):
    """Runs model loads and pipeline calls on the device, one at a time."""

    async def load(self, name: str) -> None:
        """Loads model ``name`` (a no-op when it is loaded)."""

    async def warm_up(self, name: str) -> int:
        """One short generation with model ``name``; returns its duration in ms."""

    async def run(self, jobs: list[Job]) -> BatchOutput:
        """One pipeline call for ``jobs``; raises BatchInterrupted when every job was cancelled."""

    def cancel(self, job: Job) -> None:
        """Cancels ``job``; when it is on the device, its loop stops at the end of the current step."""

    def loaded_names(self) -> frozenset[str]:
        """The models in memory."""

    async def stop(self) -> None:
        """Releases the device (the thread or the process)."""


class ThreadRunner:
    """Everything on one thread of this process (``GENERATOR_DEVICE_ISOLATION=thread``)."""

    def __init__(self, settings: Settings, catalog: Catalog, device: Device,
                 on_report: Callable[[DeviceReport], None] = lambda _report: None) -> None:
        self.settings = settings
        self.device = device
        self.registry = PipelineRegistry(catalog, device, settings.max_loaded_models, settings.max_loaded_loras)
        self._on_report = on_report
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="generator-device",
                                            initializer=self._init_thread)

    def _init_thread(self) -> None:
        use_torch_threads(self.settings.torch_threads, self.device)

    async def load(self, name: str) -> None:
        """Loads model ``name`` on the device thread."""
        await self._call(self.registry.get, name)

    async def warm_up(self, name: str) -> int:
        """One short generation with model ``name``; returns its duration in ms."""
        return await self._call(lambda: warm_up(self.registry.get(name)))

    async def run(self, jobs: list[Job]) -> BatchOutput:
        """One pipeline call for ``jobs`` on the device thread."""
        return await self._call(lambda: run_batch(self.registry.get(jobs[0].params.model), jobs, self.device))

    def cancel(self, job: Job) -> None:
        """The device thread reads ``job.cancelled`` after every step."""
        job.cancel()

    def loaded_names(self) -> frozenset[str]:
        """The models in memory."""
        return self.registry.loaded_names()

    async def stop(self) -> None:
        """Lets the running call finish in the background and drops the queued ones."""
        self._executor.shutdown(wait=False, cancel_futures=True)

    async def _call(self, fn: Callable[..., T], *args: object) -> T:
        context = contextvars.copy_context()
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._executor, functools.partial(context.run, self._reporting, fn, *args))

    def _reporting(self, fn: Callable[..., T], *args: object) -> T:
        """``fn(*args)`` on the device thread, then the device's report (also when it failed)."""
        try:
            return fn(*args)
        finally:
            self._on_report(self.registry.report())
