"""Connections to Redis (``REDIS_URL``) for the gateway's job store and the swapper's shared state.

``redis://host:port/db``, ``rediss://`` (TLS) and ``unix://`` URLs work. A
password may sit in the URL, in ``REDIS_PASSWORD``, or in the file named by
``REDIS_PASSWORD_FILE`` (a mounted secret); ``REDIS_CA_FILE`` names the CA
bundle that signs the server's certificate when it is not a public one.

Every command fails fast while Redis is unreachable (a short connect timeout
and two quick retries), so callers can report UNAVAILABLE instead of hanging.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import redis.asyncio as aioredis
from redis.asyncio.retry import Retry
from redis.backoff import ExponentialBackoff
from redis.exceptions import (
    ClusterDownError,
    MasterDownError,
    OutOfMemoryError,
    ReadOnlyError,
    ResponseError,
    TryAgainError,
)
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

from services.common.config import ConfigError, Env

_SCHEMES = frozenset({"redis", "rediss", "unix"})


@dataclass(frozen=True)
class RedisSettings:
    """Where Redis is and how to authenticate to it."""

    url: str = field(repr=False)
    password: str | None = field(default=None, repr=False)
    ca_file: str | None = None
    connect_timeout_s: float = 1.0
    # Longer than any single command we send; blocking reads use their own connections.
    command_timeout_s: float = 5.0

    @classmethod
    def from_env(cls, env: Env | None = None) -> RedisSettings | None:
        """Reads REDIS_URL, REDIS_PASSWORD(_FILE) and REDIS_CA_FILE; None when REDIS_URL is unset."""
        env = env or Env()
        url = (env.optional("REDIS_URL") or "").strip()
        if not url:
            return None
        scheme = urlsplit(url).scheme
        if scheme not in _SCHEMES:
            raise ConfigError(f"REDIS_URL must start with redis://, rediss:// or unix://, not {scheme or url!r}")
        return cls(url=url, password=env.secret("REDIS_PASSWORD"), ca_file=env.optional("REDIS_CA_FILE"),
                   connect_timeout_s=env.get_float("REDIS_CONNECT_TIMEOUT_SECONDS", 1.0, minimum=0.05),
                   command_timeout_s=env.get_float("REDIS_COMMAND_TIMEOUT_SECONDS", 5.0, minimum=0.1))

    @property
    def display_url(self) -> str:
        """The URL without its password, for logs."""
        parts = urlsplit(self.url)
        if parts.password is None:
            return self.url
        host = parts.hostname or ""
        netloc = f"{parts.username or ''}:***@{host}" + (f":{parts.port}" if parts.port else "")
        return urlunsplit(parts._replace(netloc=netloc))


def connect(settings: RedisSettings, client_name: str) -> aioredis.Redis:
    """A pooled asyncio client; ``client_name`` shows in Redis's CLIENT LIST."""
    options: dict[str, Any] = {
        "socket_connect_timeout": settings.connect_timeout_s,
        "socket_timeout": settings.command_timeout_s,
        "socket_keepalive": True,
        "health_check_interval": 15,
        "retry": Retry(ExponentialBackoff(cap=0.2, base=0.02), retries=2),
        "retry_on_error": [RedisConnectionError, RedisTimeoutError],
        "client_name": client_name,
    }
    if settings.password is not None:
        options["password"] = settings.password
    if settings.ca_file is not None and urlsplit(settings.url).scheme == "rediss":
        options["ssl_ca_certs"] = settings.ca_file
    return aioredis.Redis.from_url(settings.url, **options)


# What a lost or refused connection raises; callers turn it into UNAVAILABLE.
REDIS_DOWN = (RedisConnectionError, RedisTimeoutError, OSError)
# Error replies of a server that cannot take writes for now (full, a replica, failing over, busy):
# redis-py raises its own classes for some, and a plain ResponseError with the code for others.
_OUTAGE_CLASSES = (OutOfMemoryError, ReadOnlyError, MasterDownError, ClusterDownError, TryAgainError)
_OUTAGE_REPLIES = ("OOM", "READONLY", "MASTERDOWN", "BUSY", "NOREPLICAS", "CLUSTERDOWN", "TRYAGAIN", "MISCONF")


def is_outage(error: BaseException) -> bool:
    """True for an error reply that means "not now" (retry later) rather than "wrong request"."""
    return isinstance(error, _OUTAGE_CLASSES) or (
        isinstance(error, ResponseError) and str(error).startswith(_OUTAGE_REPLIES))
