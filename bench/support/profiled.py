"""Runs a module under cProfile, every Python thread included, and writes the statistics when it exits.

``python -m bench.support.profiled OUT.pstats services.gateway`` runs ``python -m
services.gateway`` with a profiler on the main thread and on each thread
started after it (an exporter's, an executor's), and writes them, merged, to
``OUT.pstats`` (and the main thread alone to ``OUT.main.pstats``) when the
module returns (the gateway does on SIGTERM). Times are each thread's CPU
time (``time.thread_time``), not wall-clock time: a thread waiting for the GIL
or for I/O is not charged for it. bench/gateway.py runs its
gateways this way when ``BENCH_PROFILE_DIR`` is set; read the files with
``python -m pstats``. The profiler slows the process down: use it to see
where the time goes, not for the figures.
"""

from __future__ import annotations

import cProfile
import pstats
import runpy
import sys
import threading
import time
from types import FrameType
from typing import Any

_profiles: list[cProfile.Profile] = []
_lock = threading.Lock()


def _start_thread_profile(frame: FrameType, event: str, arg: Any) -> None:
    """The profile hook every new thread starts with: replaces itself by a profiler of that thread."""
    sys.setprofile(None)
    profile = cProfile.Profile(time.thread_time)
    with _lock:
        _profiles.append(profile)
    profile.enable()


def main(out: str, module: str, args: list[str]) -> None:
    """Runs ``module`` as ``__main__`` with ``args``; writes the statistics however it ends."""
    sys.argv = [module, *args]
    threading.setprofile(_start_thread_profile)
    main_profile = cProfile.Profile(time.thread_time)
    main_profile.enable()
    try:
        runpy.run_module(module, run_name="__main__", alter_sys=True)
    finally:
        main_profile.disable()
        threading.setprofile(None)
        main_profile.dump_stats(f"{out.removesuffix('.pstats')}.main.pstats")
        merged = pstats.Stats(main_profile)
        with _lock:
            for profile in _profiles:
                merged.add(profile)
        merged.dump_stats(out)


if __name__ == "__main__":
    if len(sys.argv) < 3:
        sys.exit("usage: python -m bench.support.profiled OUT.pstats MODULE [ARG...]")
    main(sys.argv[1], sys.argv[2], sys.argv[3:])
