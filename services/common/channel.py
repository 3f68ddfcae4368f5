"""Client channels for the internal hops (gateway → generator, gateway → swapper).

Targets may name several replicas: ``dns:///generator-headless.facegen.svc:50052``
resolves to every pod behind a headless Service, and the channel spreads
calls over them (``round_robin``) instead of pinning itself to the first
address. Calls that are safe to repeat are retried on another replica when
one refuses them before doing anything: read-only and idempotent calls on
UNAVAILABLE, and a Generate that the generator refused (RESOURCE_EXHAUSTED:
its queue was full) or could not start (UNAVAILABLE) before sending any event.
A Swap is never retried: the remote job it may have submitted costs money.
"""

from __future__ import annotations

import functools
import json

import grpc

from services.common.config import MAX_MESSAGE_BYTES
from services.common.server import message_size_options

_RETRY = {"maxAttempts": 3, "initialBackoff": "0.1s", "maxBackoff": "1s", "backoffMultiplier": 2}


def _methods(service: str, *names: str) -> list[dict[str, str]]:
    return [{"service": service, "method": name} for name in names]


SERVICE_CONFIG = json.dumps({
    "loadBalancingConfig": [{"round_robin": {}}],
    "methodConfig": [
        {
            "name": [*_methods("facegen.v1.GeneratorService", "ListModels"),
                     *_methods("facegen.v1.SwapperService", "PutReference", "PutTarget", "CheckReference",
                               "CancelSwap"),
                     {"service": "grpc.health.v1.Health"}],
            "retryPolicy": {**_RETRY, "retryableStatusCodes": ["UNAVAILABLE"]},
        },
        {
            "name": _methods("facegen.v1.GeneratorService", "Generate"),
            "retryPolicy": {**_RETRY, "retryableStatusCodes": ["RESOURCE_EXHAUSTED", "UNAVAILABLE"]},
        },
    ],
})


def internal_channel(target: str, max_message_bytes: int = MAX_MESSAGE_BYTES,
                     credentials: grpc.ChannelCredentials | None = None) -> grpc.aio.Channel:
    """An aio channel with round_robin, retries, keepalive and message limits that fit the largest image.

    Calls on internal hops should pass ``wait_for_ready=True`` (ride out an
    upstream restart instead of failing at once) together with a per-call
    ``timeout`` (so waiting never becomes hanging). With ``credentials``
    (``services.common.tls.channel_credentials``) the channel speaks TLS.
    """
    open_channel = (grpc.aio.insecure_channel if credentials is None
                    else functools.partial(grpc.aio.secure_channel, credentials=credentials))
    return open_channel(
        target,
        options=[
            *message_size_options(max_message_bytes),
            ("grpc.service_config", SERVICE_CONFIG),
            ("grpc.keepalive_time_ms", 30_000),
            ("grpc.keepalive_timeout_ms", 10_000),
            ("grpc.keepalive_permit_without_calls", 1),
            ("grpc.http2.max_pings_without_data", 0),
            ("grpc.enable_retries", 1),
            # After an upstream restart, reconnect within seconds, not gRPC's default two minutes.
            ("grpc.initial_reconnect_backoff_ms", 500),
            ("grpc.max_reconnect_backoff_ms", 5_000),
            # Re-resolve DNS promptly when replicas come and go.
            ("grpc.dns_min_time_between_resolutions_ms", 5_000),
        ],
    )
