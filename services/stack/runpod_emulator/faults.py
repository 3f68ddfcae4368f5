"""Fault injection: scripted answers per route (``Fault``) and live settings (``Faults``: latency, rates, bursts)."""

from __future__ import annotations

import json
import random
import threading
from dataclasses import dataclass, field
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

ROUTES = ("run", "runsync", "status", "stream", "cancel", "retry", "health", "purge-queue")
Route = Literal["run", "runsync", "status", "stream", "cancel", "retry", "health", "purge-queue"]
FATES = ("fail", "hang", "crash", "unchanged")


@dataclass
class Fault:
    """One scripted misbehaviour, answered instead of (or, for ``delay``, before) the real answer."""

    kind: str  # "http" | "reset" | "hang" | "delay"
    status: int = 500
    body: bytes = b""
    content_type: str = "application/json"
    headers: dict[str, str] = field(default_factory=dict)
    seconds: float = 0.0

    @classmethod
    def http(cls, status: int, body: Any = None, retry_after: str | None = None) -> Fault:
        """An HTTP error answer (JSON body), with a Retry-After header if given."""
        payload = json.dumps(body if body is not None else {"error": f"emulated error {status}"}).encode()
        headers = {"Retry-After": retry_after} if retry_after is not None else {}
        return cls("http", status=status, body=payload, headers=headers)

    @classmethod
    def non_json(cls, status: int = 200, body: bytes = b"<html>Bad Gateway</html>") -> Fault:
        """An answer whose body is not JSON."""
        return cls("http", status=status, body=body, content_type="text/html")

    @classmethod
    def json_body(cls, body: Any, status: int = 200) -> Fault:
        """A well-formed answer with the given JSON body."""
        return cls("http", status=status, body=json.dumps(body).encode())

    @classmethod
    def reset(cls) -> Fault:
        """Close the connection with a TCP RST, no answer."""
        return cls("reset")

    @classmethod
    def delay(cls, seconds: float) -> Fault:
        """Answer normally, but only after ``seconds``."""
        return cls("delay", seconds=seconds)

    @classmethod
    def hang(cls, seconds: float = 30.0) -> Fault:
        """Answer nothing for ``seconds``, then close the connection."""
        return cls("hang", seconds=seconds)


class Faults(BaseModel):
    """Live fault settings of one endpoint. Bursts count down by one per affected request."""

    model_config = ConfigDict(extra="forbid", frozen=True, strict=True)

    latency_ms: int = Field(default=0, ge=0, description="added before every affected API answer")
    failure_rate: float = Field(default=0.0, ge=0, le=1, description="new jobs that end FAILED without running")
    hang_rate: float = Field(default=0.0, ge=0, le=1, description="new jobs that never finish")
    crash_rate: float = Field(default=0.0, ge=0, le=1, description="new jobs whose worker process dies mid-job")
    unchanged_rate: float = Field(default=0.0, ge=0, le=1, description="new jobs that return the target unchanged")
    error_burst: int = Field(default=0, ge=0, description="the next N affected requests get error_status")
    error_status: int = 503
    malformed_burst: int = Field(default=0, ge=0, description="the next N affected requests get a non-JSON 200")
    routes: list[Route] = Field(default_factory=list, description="routes latency and bursts affect; empty: all")
    seed: int | None = None

    @field_validator("error_status")
    @classmethod
    def _error_status(cls, value: int) -> int:
        if not (value == 429 or 500 <= value <= 599):
            raise ValueError("must be 429 or a 5xx code")
        return value


def describe(error: ValidationError) -> str:
    """Every problem of a refused JSON body on one line: ``field: message; field: message``."""
    return "; ".join(f"{'.'.join(str(p) for p in e['loc']) or 'body'}: {e['msg']}" for e in error.errors())


def parse_faults(changes: Any, base: Faults) -> Faults:
    """``base`` with the given keys changed; ValueError with one clear line for a bad key or value."""
    if not isinstance(changes, dict):
        raise ValueError("fault settings must be a JSON object")
    try:
        return Faults.model_validate({**base.model_dump(), **changes})
    except ValidationError as exc:
        raise ValueError(f"bad fault settings: {describe(exc)}") from None


class FaultState:
    """The live settings of one endpoint, shared by the request handlers and the control API."""

    def __init__(self, initial: Faults | None = None) -> None:
        self._lock = threading.Lock()
        self._faults = initial or Faults()
        self._rng = random.Random(self._faults.seed)

    def get(self) -> Faults:
        """The current settings."""
        with self._lock:
            return self._faults

    def set(self, faults: Faults) -> None:
        """Replace the settings (a new seed restarts the random choices)."""
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
                self._faults = f.model_copy(update={"error_burst": f.error_burst - 1})
                return f.latency_ms, "error"
            if f.malformed_burst > 0:
                self._faults = f.model_copy(update={"malformed_burst": f.malformed_burst - 1})
                return f.latency_ms, "malformed"
            return f.latency_ms, None

    def for_job(self) -> str | None:
        """The fate of a new job: None (it runs normally) or one of FATES."""
        with self._lock:
            f = self._faults
            rates = (("fail", f.failure_rate), ("hang", f.hang_rate), ("crash", f.crash_rate),
                     ("unchanged", f.unchanged_rate))
            for fate, rate in rates:
                if rate and self._rng.random() < rate:
                    return fate
            return None
