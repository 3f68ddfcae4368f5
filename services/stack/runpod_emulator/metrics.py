"""The emulator's Prometheus metrics, read from its endpoints when scraped (``GET /metrics``).

Jobs submitted, jobs ended by status, and the jobs queued and running now,
per endpoint. prometheus-client is pure Python with no dependencies, so it is
installed in both environments (``.venv``, and ``.venv-worker`` through the
worker's requirements, changing no pin); an environment built before it was
added answers 503 with what to run instead of failing to start.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping
from typing import Any

from services.stack.runpod_emulator.endpoint import Endpoint
from services.stack.runpod_emulator.jobs import IN_PROGRESS

try:
    from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest
    from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
    from prometheus_client.registry import Collector
except ImportError:  # an environment built before the dependency was added
    CONTENT_TYPE_LATEST = ""
    Collector = object  # type: ignore[misc,assignment]

MISSING = "prometheus-client is not installed in this environment (`make worker-venv` installs it)\n"


class EndpointCollector(Collector):
    """Samples of every endpoint's counters and queue, taken at scrape time."""

    def __init__(self, endpoints: Callable[[], Mapping[str, Endpoint]]) -> None:
        self._endpoints = endpoints

    def collect(self) -> Iterator[Any]:
        """The metric families (called by the registry on each scrape)."""
        submitted = CounterMetricFamily("facegen_runpod_emulator_jobs_submitted", "Jobs submitted (/run, /runsync).",
                                        labels=["endpoint"])
        ended = CounterMetricFamily("facegen_runpod_emulator_jobs", "Jobs that ended, by final status.",
                                    labels=["endpoint", "status"])
        queued = GaugeMetricFamily("facegen_runpod_emulator_queue_length", "Jobs waiting for a worker.",
                                   labels=["endpoint"])
        running = GaugeMetricFamily("facegen_runpod_emulator_jobs_in_progress", "Jobs running on a worker.",
                                    labels=["endpoint"])
        for name, endpoint in list(self._endpoints().items()):
            submitted.add_metric([name], endpoint.submitted)
            for status, count in sorted(endpoint.ended.items()):
                ended.add_metric([name, status], count)
            queued.add_metric([name], len(endpoint.queue))
            running.add_metric([name], sum(1 for job in list(endpoint.jobs.values()) if job.status == IN_PROGRESS))
        yield from (submitted, ended, queued, running)


def exposition(endpoints: Callable[[], Mapping[str, Endpoint]]) -> Callable[[], tuple[int, bytes, str]]:
    """What ``GET /metrics`` answers: (HTTP status, body, content type)."""
    if not CONTENT_TYPE_LATEST:
        return lambda: (503, MISSING.encode(), "text/plain")
    registry = CollectorRegistry(auto_describe=False)
    registry.register(EndpointCollector(endpoints))
    return lambda: (200, generate_latest(registry), CONTENT_TYPE_LATEST)
