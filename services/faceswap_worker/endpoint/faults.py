"""Fault injection: settings changed at run time through ``POST /admin/faults`` or set by CLI flags."""

from __future__ import annotations

import random
import threading
from dataclasses import asdict, dataclass, field, fields, replace
from typing import Any

ROUTES = ("run", "runsync", "status", "stream", "cancel", "retry", "health", "purge-queue")


@dataclass(frozen=True)
class Faults:
    """What to break. Bursts count down by one per affected request."""

    latency_ms: int = 0  # added before every affected API answer
    failure_rate: float = 0.0  # fraction of jobs that end FAILED ("injected failure") without running
    hang_rate: float = 0.0  # fraction of jobs that never finish (until cancel, executionTimeout or ttl)
    crash_rate: float = 0.0  # fraction of jobs whose worker process is killed mid-job (FAILED, worker restarts)
    error_burst: int = 0  # the next N affected requests are answered with error_status
    error_status: int = 503  # 429 or any 5xx
    malformed_burst: int = 0  # the next N affected requests get 200 with a body that is not valid JSON
    routes: tuple[str, ...] = field(default=())  # affected API routes (see ROUTES); empty = all
    seed: int | None = None  # seeds the rates' random choices, for reproducible tests

    def to_json(self) -> dict[str, Any]:
        """The settings as JSON."""
        out = asdict(self)
        out["routes"] = list(self.routes)
        return out


def parse_faults(body: Any, base: Faults) -> Faults:
    """``base`` with the given keys changed; raises ValueError with a clear message on a bad key or value."""
    if not isinstance(body, dict):
        raise ValueError("fault settings must be a JSON object")
    known = {f.name for f in fields(Faults)}
    unknown = sorted(set(body) - known)
    if unknown:
        raise ValueError(f"unknown fault settings: {', '.join(unknown)} (known: {', '.join(sorted(known))})")
    changes: dict[str, Any] = {}
    for key, value in body.items():
        if key in ("failure_rate", "hang_rate", "crash_rate"):
            if isinstance(value, bool) or not isinstance(value, int | float) or not 0 <= value <= 1:
                raise ValueError(f"{key} must be a number between 0 and 1")
            changes[key] = float(value)
        elif key in ("latency_ms", "error_burst", "malformed_burst"):
            if isinstance(value, bool) or not isinstance(value, int) or value < 0:
                raise ValueError(f"{key} must be a non-negative integer")
            changes[key] = value
        elif key == "error_status":
            if isinstance(value, bool) or not isinstance(value, int) or not (value == 429 or 500 <= value <= 599):
                raise ValueError("error_status must be 429 or a 5xx code")
            changes[key] = value
        elif key == "routes":
            if not isinstance(value, list) or any(r not in ROUTES for r in value):
                raise ValueError(f"routes must be a list drawn from {', '.join(ROUTES)}")
            changes[key] = tuple(value)
        elif key == "seed":
            if value is not None and (isinstance(value, bool) or not isinstance(value, int)):
                raise ValueError("seed must be an integer or null")
            changes[key] = value
    return replace(base, **changes)


class FaultState:
    """The live fault settings, shared by the HTTP threads and the job store."""

    def __init__(self, initial: Faults | None = None) -> None:
        self._lock = threading.Lock()
        self._faults = initial or Faults()
        self._rng = random.Random(self._faults.seed)

    def get(self) -> Faults:
        with self._lock:
            return self._faults

    def set(self, faults: Faults) -> None:
        with self._lock:
            if faults.seed is not None and faults.seed != self._faults.seed:
                self._rng = random.Random(faults.seed)
            self._faults = faults

    def for_request(self, route: str) -> tuple[int, str | None]:
        """(latency ms, action) for one API request: action is None, "error" or "malformed"."""
        with self._lock:
            f = self._faults
            if f.routes and route not in f.routes:
                return 0, None
            if f.error_burst > 0:
                self._faults = replace(f, error_burst=f.error_burst - 1)
                return f.latency_ms, "error"
            if f.malformed_burst > 0:
                self._faults = replace(f, malformed_burst=f.malformed_burst - 1)
                return f.latency_ms, "malformed"
            return f.latency_ms, None

    def for_job(self) -> str | None:
        """The fate of a new job: None (runs normally), "fail", "hang" or "crash"."""
        with self._lock:
            f = self._faults
            if f.failure_rate and self._rng.random() < f.failure_rate:
                return "fail"
            if f.hang_rate and self._rng.random() < f.hang_rate:
                return "hang"
            if f.crash_rate and self._rng.random() < f.crash_rate:
                return "crash"
            return None
