"""The swapper's metrics (docs/operations.md lists them with the questions they answer).

Recorded where the work happens: each RunPod HTTP request in the client
(by endpoint, route and HTTP status, ``error`` when no answer came), each
remote job's queue and run time when it ends, the circuit breakers and rate
limiters per endpoint, each storage request by operation, the reference
cache, and the blocking calls running in the thread pools.
"""

from __future__ import annotations

from prometheus_client import Counter, Gauge, Histogram

from services.common.metrics import DURATION_BUCKETS, FAST_BUCKETS, ServiceMetrics
from services.swapper.breaker import BreakerState

# The breaker gauge's values.
BREAKER_VALUES = {BreakerState.CLOSED: 0, BreakerState.HALF_OPEN: 1, BreakerState.OPEN: 2}


class SwapperMetrics(ServiceMetrics):
    """What the swapper records, on its own registry."""

    def __init__(self) -> None:
        super().__init__()
        registry = self.registry
        self.runpod_requests = Counter(
            "facegen_swapper_runpod_requests_total",
            "RunPod API requests, by endpoint, route (run, status, cancel, health) and HTTP status "
            "(\"error\": no answer: refused, reset or timed out).",
            ["endpoint", "route", "status"], registry=registry)
        self.runpod_seconds = Histogram("facegen_swapper_runpod_request_duration_seconds",
                                        "RunPod API request time, answer included (long-polls wait on purpose).",
                                        ["endpoint", "route"], buckets=FAST_BUCKETS, registry=registry)
        self.remote_jobs = Counter("facegen_swapper_remote_jobs_total",
                                   "Remote face-swap jobs that reached a terminal status, by endpoint and status.",
                                   ["endpoint", "status"], registry=registry)
        self.remote_queue_seconds = Histogram("facegen_swapper_remote_queue_seconds",
                                              "Time a remote job waited in its endpoint's queue (delayTime).",
                                              ["endpoint"], buckets=DURATION_BUCKETS, registry=registry)
        self.remote_execution_seconds = Histogram("facegen_swapper_remote_execution_seconds",
                                                  "Time a remote job ran on a worker (executionTime).",
                                                  ["endpoint"], buckets=DURATION_BUCKETS, registry=registry)
        self.breaker_state = Gauge("facegen_swapper_circuit_breaker_state",
                                   "Each endpoint's circuit breaker: 0 closed, 1 half-open, 2 open.", ["endpoint"],
                                   registry=registry)
        self.breaker_opened = Counter("facegen_swapper_circuit_breaker_opened_total",
                                      "Times an endpoint's circuit breaker opened.", ["endpoint"], registry=registry)
        self.rate_limit_wait_seconds = Histogram(
            "facegen_swapper_rate_limit_wait_seconds",
            "Time a request waited for its rate-limit slot, by endpoint and route (0 for most).",
            ["endpoint", "route"], buckets=(0.0, *FAST_BUCKETS), registry=registry)
        self.rate_limit_refusals = Counter(
            "facegen_swapper_rate_limit_refusals_total",
            "Requests not sent because their rate-limit slot came after the swap's deadline.",
            ["endpoint", "route"], registry=registry)
        self.storage_seconds = Histogram("facegen_swapper_storage_operation_duration_seconds",
                                         "Object storage request time, by operation.", ["operation"],
                                         buckets=FAST_BUCKETS, registry=registry)
        self.storage_errors = Counter("facegen_swapper_storage_errors_total",
                                      "Object storage requests that failed (a missing object is not a failure).",
                                      ["operation"], registry=registry)
        self.reference_cache_hits = Counter(
            "facegen_swapper_reference_cache_hits_total",
            "PutReference calls answered without an upload: known here, being uploaded, or stored and fresh.",
            registry=registry)
        self.reference_uploads = Counter("facegen_swapper_reference_uploads_total",
                                         "Reference faces uploaded to storage.", registry=registry)
        self.swaps_in_flight = Gauge("facegen_swapper_swaps_in_flight", "Swap calls running now.",
                                     registry=registry)
        self.blocking_in_flight = Gauge("facegen_swapper_blocking_calls_in_flight",
                                        "Blocking calls (storage, image checks) submitted to a thread pool and not "
                                        "finished, by pool.", ["pool"], registry=registry)
