"""Connections to Redis (``REDIS_URL``) for the gateway's job store and the swapper's shared state.

``redis://host:port/db``, ``rediss://`` (TLS) and ``unix://`` URLs work. A
password may sit in the URL, in ``REDIS_PASSWORD``, or in the file named by
``REDIS_PASSWORD_FILE`` (a mounted secret); ``REDIS_CA_FILE`` names the CA
bundle that signs the server's certificate when it is not a public one.

Every command fails fast while Redis is unreachable (a short connect timeout
and two quick retries), so callers can report UNAVAILABLE instead of hanging.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import redis.asyncio as aioredis
from pydantic import Field, SecretStr, field_validator
from pydantic_settings import SettingsConfigDict
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

from services.common.config import EnvSettings

_SCHEMES = frozenset({"redis", "rediss", "unix"})


class RedisSettings(EnvSettings):
    """Where Redis is and how to authenticate to it: the REDIS_* variables."""

    model_config = SettingsConfigDict(env_prefix="REDIS_")

    # May hold a password: kept out of repr (display_url masks it).
    url: str = Field(repr=False)
    password: SecretStr | None = None
    ca_file: str | None = None
    connect_timeout_s: float = Field(1.0, ge=0.05, le=60, validation_alias="REDIS_CONNECT_TIMEOUT_SECONDS")
    # Longer than any single command we send; blocking reads use their own connections.
    command_timeout_s: float = Field(5.0, ge=0.1, le=600, validation_alias="REDIS_COMMAND_TIMEOUT_SECONDS")

    @classmethod
    def configured(cls, environ: Mapping[str, str]) -> bool:
        """Redis is used only when REDIS_URL is set."""
        return bool(environ.get("REDIS_URL", "").strip())

    @field_validator("url")
    @classmethod
    def _known_scheme(cls, url: str) -> str:
        url = url.strip()
        if urlsplit(url).scheme not in _SCHEMES:
            raise ValueError("does not start with redis://, rediss:// or unix://")
        return url

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
        options["password"] = settings.password.get_secret_value()
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
