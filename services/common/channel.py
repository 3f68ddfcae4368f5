"""Client channels for the internal hops (gateway → generator, gateway → swapper)."""

from __future__ import annotations

import grpc

from services.common.config import MAX_MESSAGE_BYTES
from services.common.server import message_size_options


def internal_channel(target: str, max_message_bytes: int = MAX_MESSAGE_BYTES) -> grpc.aio.Channel:
    """An aio channel with keepalive and message limits that fit the largest image.

    Calls on internal hops should pass ``wait_for_ready=True`` (ride out an
    upstream restart instead of failing at once) together with a per-call
    ``timeout`` (so waiting never becomes hanging).
    """
    return grpc.aio.insecure_channel(
        target,
        options=[
            *message_size_options(max_message_bytes),
            ("grpc.keepalive_time_ms", 30_000),
            ("grpc.keepalive_timeout_ms", 10_000),
            ("grpc.keepalive_permit_without_calls", 1),
            ("grpc.http2.max_pings_without_data", 0),
            ("grpc.enable_retries", 1),
            # After an upstream restart, reconnect within seconds, not gRPC's default two minutes.
            ("grpc.initial_reconnect_backoff_ms", 500),
            ("grpc.max_reconnect_backoff_ms", 5_000),
        ],
    )
