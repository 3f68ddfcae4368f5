"""Channel settings shared by the sync and asyncio clients.

``target`` is any gRPC target: ``host:port``, ``dns:///gateway.internal:50051``
(every address the name resolves to), or ``ipv4:10.0.0.1:50051,10.0.0.2:50051``.
Calls are spread over the addresses (``round_robin``), and a gateway that
goes away is left out until it answers again, so re-attaching to a job goes
to a replica that is up.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import grpc

from services.common.config import MAX_MESSAGE_BYTES
from services.common.tls import channel_credentials
from services.common.tls_files import TlsFiles, check_client_files

Metadata = tuple[tuple[str, str], ...]

_SERVICE_CONFIG = json.dumps({"loadBalancingConfig": [{"round_robin": {}}]})


def channel_options(extra: Sequence[tuple[str, Any]] = ()) -> list[tuple[str, Any]]:
    """Options for a gateway channel: message limits, keepalive, quick reconnects; ``extra`` replaces any of them.

    (gRPC keeps the first of two options with the same name, so a caller's option replaces ours here.)
    """
    defaults = [
        # Room for the largest allowed photos and results, as on every hop of facegen.
        ("grpc.max_send_message_length", MAX_MESSAGE_BYTES),
        ("grpc.max_receive_message_length", MAX_MESSAGE_BYTES),
        ("grpc.service_config", _SERVICE_CONFIG),
        # Notice a gateway that vanished without closing the connection (a lost node) within ~30 s.
        # The gateway accepts pings every 10 s or more (services/common/server.py).
        ("grpc.keepalive_time_ms", 20_000),
        ("grpc.keepalive_timeout_ms", 10_000),
        ("grpc.http2.max_pings_without_data", 0),
        # Reconnect to a restarted gateway within a second or two, not gRPC's default of up to two minutes.
        ("grpc.initial_reconnect_backoff_ms", 250),
        ("grpc.max_reconnect_backoff_ms", 2_000),
    ]
    given = dict(extra)
    return [(name, value) for name, value in defaults if name not in given] + list(given.items())


def credentials(tls: bool | grpc.ChannelCredentials) -> grpc.ChannelCredentials | None:
    """TLS credentials: the system's roots for ``True``, the given ones, or None for plaintext."""
    if isinstance(tls, grpc.ChannelCredentials):
        return tls
    return grpc.ssl_channel_credentials() if tls else None


def tls_credentials(ca: str | Path | None = None, cert: str | Path | None = None, key: str | Path | None = None,
                    names: tuple[str, str, str] = ("cert", "key", "ca")) -> grpc.ChannelCredentials:
    """TLS credentials from PEM files, for ``tls=``: ``ca`` signs the gateway's certificate (None: the
    system's roots), ``cert`` and ``key`` are a client certificate, for a gateway that requires one.

    ValueError, naming the file (by ``names``: cert, key, ca), when one cannot be used.
    """
    def path(value: str | Path | None) -> Path | None:
        return Path(value) if value else None

    files = TlsFiles(path(cert), path(key), path(ca), variables=names)
    check_client_files(files)
    return channel_credentials(files) or grpc.ssl_channel_credentials()


def auth_metadata(token: str | None) -> Metadata:
    """The ``authorization: Bearer`` entry when a token is given."""
    return (("authorization", f"Bearer {token}"),) if token else ()
