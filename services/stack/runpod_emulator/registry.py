"""What the emulator holds: its endpoints, served files, and a record of every request."""

from __future__ import annotations

import collections
import time
import uuid
from dataclasses import dataclass
from typing import Any

from services.stack.runpod_emulator.endpoint import Endpoint, Limits, Runner
from services.stack.runpod_emulator.jobs import Job
from services.stack.runpod_emulator.scripted import ScriptedRunner


@dataclass
class Recorded:
    """One request the emulator received."""

    method: str
    path: str
    route: str  # "run", "status", ..., "files", or "admin"
    endpoint: str
    job_id: str
    query: dict[str, str]
    authorization: str
    body: Any  # the JSON body, None when absent or not JSON
    at: float  # time.monotonic()


class Registry:
    """Endpoints, files and recorded requests; ``record_requests=False`` keeps only the counts."""

    def __init__(self, api_key: str, host: str = "127.0.0.1", record_requests: bool = True) -> None:
        self.api_key = api_key
        self.host = host
        self.port = 0
        self.record_requests = record_requests
        self.requests: list[Recorded] = []
        self.endpoints: dict[str, Endpoint] = {}
        self.files: dict[str, tuple[bytes, str]] = {}
        self._counts: collections.Counter[tuple[str, str]] = collections.Counter()

    @property
    def base_url(self) -> str:
        """``http://127.0.0.1:PORT/v2``: what RUNPOD_API_BASE should be."""
        return f"http://{self.host}:{self.port}/v2"

    def endpoint(self, endpoint_id: str, runner: Runner | None = None, limits: Limits | None = None) -> Endpoint:
        """The endpoint with this id, created on first use (scripted, unless a runner is given)."""
        if endpoint_id not in self.endpoints:
            self.endpoints[endpoint_id] = Endpoint(endpoint_id, runner or ScriptedRunner(), limits)
        return self.endpoints[endpoint_id]

    def add_file(self, data: bytes, content_type: str = "image/png") -> str:
        """Serve ``data`` at a URL that needs no key (for ``result_url`` outputs); returns the URL."""
        name = uuid.uuid4().hex
        self.files[name] = (data, content_type)
        return f"http://{self.host}:{self.port}/files/{name}"

    def record(self, method: str, path: str, route: str, endpoint: str, job_id: str, query: dict[str, str],
               authorization: str, body: Any) -> None:
        """Count a request (and keep it, when recording)."""
        self._counts[(route, endpoint)] += 1
        if self.record_requests:
            self.requests.append(Recorded(method, path, route, endpoint, job_id, query, authorization, body,
                                          time.monotonic()))

    def count(self, route: str | None = None, endpoint: str | None = None, job_id: str | None = None) -> int:
        """How many requests matched."""
        if job_id is not None and not self.record_requests:
            raise ValueError("counting by job id needs record_requests=True")
        if job_id is None:
            return sum(n for (r, e), n in list(self._counts.items())
                       if (route is None or r == route) and (endpoint is None or e == endpoint))
        return sum(1 for r in list(self.requests)
                   if (route is None or r.route == route) and (endpoint is None or r.endpoint == endpoint)
                   and r.job_id == job_id)

    def jobs(self) -> list[Job]:
        """Every job still held, on every endpoint."""
        return [job for ep in list(self.endpoints.values()) for job in list(ep.jobs.values())]

    def job(self, job_id: str) -> Job:
        """A job by id."""
        for job in self.jobs():
            if job.id == job_id:
                return job
        raise KeyError(job_id)
