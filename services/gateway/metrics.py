"""The gateway's metrics (docs/operations.md lists them with the questions they answer).

Jobs are counted where they happen: submitted by the replica that accepted
them, finished (with their images, fallbacks and durations) by the replica
that wrote their terminal event, so a sum over replicas counts each job once.
The queue depth is the whole deployment's with the Redis store (every
replica reports the same number: use ``max``), this replica's otherwise.
"""

from __future__ import annotations

from prometheus_client import Counter, Gauge, Histogram

from services.common.metrics import COUNT_BUCKETS, DURATION_BUCKETS, GrpcClientMetrics, ServiceMetrics


class GatewayMetrics(ServiceMetrics):
    """What the gateway records, on its own registry."""

    def __init__(self) -> None:
        super().__init__()
        registry = self.registry
        self.grpc_client = GrpcClientMetrics(registry)
        self.jobs_submitted = Counter("facegen_gateway_jobs_submitted_total", "Jobs accepted, by mode.",
                                      ["mode"], registry=registry)
        self.jobs_finished = Counter(
            "facegen_gateway_jobs_finished_total",
            "Jobs that reached their terminal event, by mode, final state and status code name.",
            ["mode", "state", "code"], registry=registry)
        self.jobs_resumed = Counter("facegen_gateway_jobs_resumed_total",
                                    "Jobs this replica took over from a gateway that stopped renewing its lease.",
                                    registry=registry)
        self.job_seconds = Histogram("facegen_gateway_job_duration_seconds",
                                     "From a job's submission to its terminal event, by mode and final state.",
                                     ["mode", "state"], buckets=DURATION_BUCKETS, registry=registry)
        self.stage_seconds = Histogram(
            "facegen_gateway_stage_duration_seconds",
            "Wall-clock span of each stage of a job (first start to last end; stages overlap).",
            ["stage"], buckets=DURATION_BUCKETS, registry=registry)
        self.job_images = Histogram("facegen_gateway_job_images", "Images asked for per finished job.",
                                    buckets=COUNT_BUCKETS, registry=registry)
        self.images = Counter("facegen_gateway_images_total",
                              "Images of finished jobs, by outcome: swapped, fallback (delivered without the "
                              "swap) or failed (not delivered).", ["outcome"], registry=registry)
        self.fallbacks = Counter("facegen_gateway_fallbacks_total",
                                 "Images delivered without the face swap, by reason.", ["reason"], registry=registry)
        self.queue_depth = Gauge("facegen_gateway_queue_depth",
                                 "Jobs waiting for a running slot (the whole deployment with the Redis store).",
                                 registry=registry)
        self.running_jobs = Gauge("facegen_gateway_running_jobs", "Jobs running on this replica.",
                                  registry=registry)
        self.events_delivered = Counter("facegen_gateway_events_delivered_total",
                                        "Job events sent to callers on Run and Watch streams.", registry=registry)
        self.watch_streams = Gauge("facegen_gateway_watch_streams", "Run and Watch streams open on this replica.",
                                   registry=registry)
        self.auth_failures = Counter("facegen_gateway_auth_failures_total",
                                     "Calls refused UNAUTHENTICATED, by reason (missing, malformed or unknown token).",
                                     ["reason"], registry=registry)
