"""The swapper's settings, read once from the environment at start.

Every variable is listed with its default and meaning in docs/swapper.md.
Secrets (the RunPod key, the storage secret) may also come from mounted files
(``NAME_FILE``) and are kept out of ``repr`` so that logging a settings object
never shows them.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass, field
from urllib.parse import urlsplit

from services.common.config import ConfigError, Env, MiB, ServerSettings
from services.common.image_limits import STORED_IMAGE, SWAP_RESULT, ImageLimits
from services.common.redis import RedisSettings

DEFAULT_LISTEN = "127.0.0.1:50053"
DEFAULT_RUNPOD_API_BASE = "https://api.runpod.ai/v2"

_ENDPOINT_ID = re.compile(r"^[A-Za-z0-9_-]{1,128}$")
# S3 bucket naming rules (the subset every S3-compatible store accepts).
_BUCKET = re.compile(r"^[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]$")


@dataclass(frozen=True)
class StorageSettings:
    """Where and how images are stored. ``endpoint_url=None`` means the embedded loopback server."""

    endpoint_url: str | None
    access_key_id: str | None = field(repr=False)
    secret_access_key: str | None = field(repr=False)
    bucket: str
    region: str
    public_base_url: str | None
    presign_expiry_s: int
    temp_presign_expiry_s: int
    manage_lifecycle: bool
    create_bucket: bool
    temp_expiry_days: int
    reference_expiry_days: int
    result_expiry_days: int
    max_attempts: int
    connect_timeout_s: float
    read_timeout_s: float
    embedded_listen: str

    @property
    def embedded(self) -> bool:
        """True when no endpoint is configured and the embedded loopback server is used."""
        return self.endpoint_url is None


@dataclass(frozen=True)
class RunPodSettings:
    """The face-swap endpoints and how the client talks to them."""

    api_key: str | None = field(repr=False)
    api_base: str
    # Primary endpoint first, then the backups in order; empty = swapping disabled.
    endpoints: tuple[str, ...]
    process_type: str
    deadline_s: float
    status_wait_ms: int
    poll_min_s: float
    poll_max_s: float
    poll_ratio: float
    http_timeout_s: float
    cancel_timeout_s: float
    submit_attempts: int
    rate_safety: float
    breaker_failures: int
    breaker_cooldown_s: float
    download_timeout_s: float
    result_limits: ImageLimits

    @property
    def enabled(self) -> bool:
        """True when at least one endpoint is configured."""
        return bool(self.endpoints)


@dataclass(frozen=True)
class Settings:
    """Everything the swapper reads from the environment."""

    server: ServerSettings
    storage: StorageSettings
    runpod: RunPodSettings
    target_limits: ImageLimits
    http_connections: int
    storage_threads: int
    max_in_flight: int
    # Shared state (resumable swaps' records, the rate limit) when REDIS_URL is set.
    redis: RedisSettings | None = None
    record_grace_s: float = 60.0

    @classmethod
    def from_env(cls, env: Env | None = None) -> Settings:
        """Reads and checks every variable; raises ConfigError naming the first bad one."""
        env = env or Env()
        storage = _storage_from_env(env)
        runpod = _runpod_from_env(env)
        if storage.temp_presign_expiry_s < runpod.deadline_s:
            raise ConfigError(
                f"S3_TEMP_PRESIGN_EXPIRY_SECONDS={storage.temp_presign_expiry_s} must be at least "
                f"FACE_SWAP_DEADLINE_SECONDS={runpod.deadline_s:g}: the worker may fetch its inputs "
                "until the deadline")
        return cls(
            server=ServerSettings.from_env("SWAPPER", DEFAULT_LISTEN, env),
            storage=storage,
            runpod=runpod,
            target_limits=ImageLimits(
                max_bytes=env.get_int("SWAPPER_MAX_IMAGE_BYTES", STORED_IMAGE.max_bytes, minimum=1024,
                                      maximum=512 * MiB),
                max_pixels=env.get_int("SWAPPER_MAX_IMAGE_PIXELS", STORED_IMAGE.max_pixels, minimum=64),
                max_side=env.get_int("SWAPPER_MAX_IMAGE_SIDE", STORED_IMAGE.max_side, minimum=8),
                min_side=STORED_IMAGE.min_side),
            http_connections=env.get_int("SWAPPER_HTTP_CONNECTIONS", 256, minimum=8, maximum=65_536),
            storage_threads=env.get_int("SWAPPER_STORAGE_THREADS", 32, minimum=2, maximum=1024),
            max_in_flight=env.get_int("SWAPPER_MAX_IN_FLIGHT", 512, minimum=1, maximum=100_000),
            redis=RedisSettings.from_env(env),
            record_grace_s=env.get_float("SWAPPER_RECORD_GRACE_SECONDS", 60.0, minimum=1.0, maximum=86_400),
        )


def _first(read: Callable[[str], str | None], *names: str) -> str | None:
    """The value of the first of ``names`` that ``read`` finds set (S3_* before its R2_* alias)."""
    for name in names:
        value = read(name)
        if value is not None:
            return value
    return None


def _check_url(name: str, value: str) -> str:
    parts = urlsplit(value)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ConfigError(f"{name}={value!r} is not an http(s) URL")
    if parts.username or parts.password:
        raise ConfigError(f"{name} must not carry credentials in the URL")
    return value.rstrip("/")


def _storage_from_env(env: Env) -> StorageSettings:
    endpoint = _first(env.optional, "S3_ENDPOINT_URL", "R2_ENDPOINT_URL")
    account = env.optional("R2_ACCOUNT_ID")
    if endpoint is None and account is not None:
        endpoint = f"https://{account}.r2.cloudflarestorage.com"
    if endpoint is not None:
        endpoint = _check_url("S3_ENDPOINT_URL", endpoint)
    access_key = _first(env.secret, "S3_ACCESS_KEY_ID", "R2_ACCESS_KEY_ID")
    secret_key = _first(env.secret, "S3_SECRET_ACCESS_KEY", "R2_SECRET_ACCESS_KEY")
    if endpoint is not None and (access_key is None or secret_key is None):
        raise ConfigError("S3_ACCESS_KEY_ID and S3_SECRET_ACCESS_KEY are required when "
                          "S3_ENDPOINT_URL is set (or R2_ACCESS_KEY_ID / R2_SECRET_ACCESS_KEY)")
    bucket = _first(env.optional, "S3_BUCKET", "R2_BUCKET") or "facegen"
    if not _BUCKET.match(bucket):
        raise ConfigError(f"S3_BUCKET={bucket!r} is not a valid bucket name "
                          "(3-63 lowercase letters, digits, dots and hyphens)")
    public = _first(env.optional, "S3_PUBLIC_BASE_URL", "R2_PUBLIC_BASE_URL")
    return StorageSettings(
        endpoint_url=endpoint,
        access_key_id=access_key,
        secret_access_key=secret_key,
        bucket=bucket,
        region=env.get_str("S3_REGION", "auto"),
        public_base_url=_check_url("S3_PUBLIC_BASE_URL", public) if public else None,
        presign_expiry_s=env.get_int("S3_PRESIGN_EXPIRY_SECONDS", 3600, minimum=1, maximum=604_800),
        temp_presign_expiry_s=env.get_int("S3_TEMP_PRESIGN_EXPIRY_SECONDS", 900, minimum=1,
                                          maximum=604_800),
        manage_lifecycle=env.get_bool("S3_MANAGE_LIFECYCLE", True),
        create_bucket=env.get_bool("S3_CREATE_BUCKET", endpoint is None),
        temp_expiry_days=env.get_int("S3_TEMP_EXPIRY_DAYS", 1, minimum=1, maximum=3650),
        reference_expiry_days=env.get_int("S3_REFERENCE_EXPIRY_DAYS", 7, minimum=1, maximum=3650),
        result_expiry_days=env.get_int("S3_RESULT_EXPIRY_DAYS", 0, minimum=0, maximum=36500),
        max_attempts=env.get_int("S3_MAX_ATTEMPTS", 3, minimum=1, maximum=10),
        connect_timeout_s=env.get_float("S3_CONNECT_TIMEOUT_SECONDS", 5.0, minimum=0.1, maximum=120),
        read_timeout_s=env.get_float("S3_READ_TIMEOUT_SECONDS", 30.0, minimum=0.1, maximum=600),
        embedded_listen=env.get_str("S3_EMBEDDED_LISTEN", "127.0.0.1:0"),
    )


def _runpod_from_env(env: Env) -> RunPodSettings:
    primary = env.optional("FACE_SWAP_ENDPOINT")
    backups = env.get_list("FACE_SWAP_BACKUP_ENDPOINTS")
    if primary is None and backups:
        raise ConfigError("FACE_SWAP_BACKUP_ENDPOINTS is set but FACE_SWAP_ENDPOINT is not")
    endpoints: list[str] = []
    for endpoint in ((primary,) if primary else ()) + backups:
        if not _ENDPOINT_ID.match(endpoint):
            raise ConfigError(f"endpoint id {endpoint!r} in FACE_SWAP_ENDPOINT / "
                              "FACE_SWAP_BACKUP_ENDPOINTS may only hold letters, digits, _ and -")
        if endpoint not in endpoints:
            endpoints.append(endpoint)
    api_key = env.secret("RUNPOD_API_KEY")
    if endpoints and api_key is None:
        raise ConfigError("RUNPOD_API_KEY (or RUNPOD_API_KEY_FILE) is required when "
                          "FACE_SWAP_ENDPOINT is set")
    deadline = env.get_float("FACE_SWAP_DEADLINE_SECONDS", 300.0, minimum=1.0, maximum=86_400)
    poll_min_ms = env.get_int("FACE_SWAP_POLL_MIN_MS", 250, minimum=10, maximum=600_000)
    poll_max_ms = env.get_int("FACE_SWAP_POLL_MAX_MS", 3000, minimum=10, maximum=600_000)
    if poll_max_ms < poll_min_ms:
        raise ConfigError(f"FACE_SWAP_POLL_MAX_MS={poll_max_ms} is below FACE_SWAP_POLL_MIN_MS={poll_min_ms}")
    return RunPodSettings(
        api_key=api_key,
        api_base=_check_url("RUNPOD_API_BASE", env.get_str("RUNPOD_API_BASE", DEFAULT_RUNPOD_API_BASE)),
        endpoints=tuple(endpoints),
        process_type=env.get_str("FACE_SWAP_PROCESS_TYPE", "single_image"),
        deadline_s=deadline,
        status_wait_ms=env.get_int("FACE_SWAP_STATUS_WAIT_MS", 10_000, minimum=0, maximum=300_000),
        poll_min_s=poll_min_ms / 1000,
        poll_max_s=poll_max_ms / 1000,
        poll_ratio=env.get_float("FACE_SWAP_POLL_RATIO", 0.5, minimum=0.0, maximum=10.0),
        http_timeout_s=env.get_float("FACE_SWAP_HTTP_TIMEOUT_SECONDS", 10.0, minimum=0.1, maximum=300),
        cancel_timeout_s=env.get_float("FACE_SWAP_CANCEL_TIMEOUT_SECONDS", 5.0, minimum=0.1, maximum=60),
        submit_attempts=env.get_int("FACE_SWAP_SUBMIT_ATTEMPTS", 3, minimum=1, maximum=20),
        rate_safety=env.get_float("FACE_SWAP_RATE_SAFETY", 0.8, minimum=0.01, maximum=1.0),
        breaker_failures=env.get_int("FACE_SWAP_BREAKER_FAILURES", 5, minimum=1, maximum=1000),
        breaker_cooldown_s=env.get_float("FACE_SWAP_BREAKER_COOLDOWN_SECONDS", 30.0, minimum=0.01,
                                         maximum=3600),
        download_timeout_s=env.get_float("FACE_SWAP_DOWNLOAD_TIMEOUT_SECONDS", 30.0, minimum=0.1,
                                         maximum=600),
        result_limits=ImageLimits(
            max_bytes=env.get_int("FACE_SWAP_RESULT_MAX_BYTES", SWAP_RESULT.max_bytes, minimum=1024,
                                  maximum=512 * MiB),
            max_pixels=env.get_int("FACE_SWAP_RESULT_MAX_PIXELS", SWAP_RESULT.max_pixels, minimum=64),
            max_side=env.get_int("FACE_SWAP_RESULT_MAX_SIDE", SWAP_RESULT.max_side, minimum=8),
            min_side=SWAP_RESULT.min_side),
    )
