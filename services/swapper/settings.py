"""The swapper's settings, read once from the environment at start.

Every variable is listed with its default and meaning in docs/swapper.md.
Secrets (the RunPod key, the storage keys) are ``SecretStr``: they may come
from mounted files (``NAME_FILE``) and never show in ``repr`` or a log line.
"""

from __future__ import annotations

import importlib.util
import re
from typing import Annotated, Any, Literal, Self
from urllib.parse import urlsplit

from pydantic import AliasChoices, Field, SecretStr, field_validator, model_validator
from pydantic_settings import SettingsConfigDict

from services.common.config import CommaList, EnvSettings, Lowercase, MiB, ServerSettings
from services.common.image_limits import STORED_IMAGE, SWAP_RESULT, ImageLimits
from services.common.redis import RedisSettings
from services.identity import SAME_PERSON

DEFAULT_RUNPOD_API_BASE = "https://api.runpod.ai/v2"

_ENDPOINT_ID = re.compile(r"^[A-Za-z0-9_-]{1,128}$")
# S3 bucket naming rules (the subset every S3-compatible store accepts).
_BUCKET = re.compile(r"^[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]$")
_ENDPOINT_KEYS = ("S3_ENDPOINT_URL", "R2_ENDPOINT_URL", "R2_ACCOUNT_ID", "endpoint_url", "r2_account_id")
_ENDPOINT_HINT = ("the S3 API of the store, e.g. https://<account>.r2.cloudflarestorage.com, or R2_ACCOUNT_ID; "
                  "`python -m services.stack up` runs a local one")


def _http_url(value: str | None) -> str | None:
    """An http(s) URL without credentials and without a trailing slash."""
    if value is None:
        return None
    parts = urlsplit(value.strip())
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ValueError("is not an http(s) URL")
    if parts.username or parts.password:
        raise ValueError("must not carry credentials in the URL")
    return value.strip().rstrip("/")


class StorageSettings(EnvSettings):
    """Where and how images are stored: S3_* (R2_* accepted for the same settings)."""

    model_config = SettingsConfigDict(env_prefix="S3_")

    endpoint_url: str | None = Field(None, validation_alias=AliasChoices("S3_ENDPOINT_URL", "R2_ENDPOINT_URL"))
    # R2 only: the endpoint is https://<account>.r2.cloudflarestorage.com when no URL is set.
    r2_account_id: str | None = Field(None, validation_alias="R2_ACCOUNT_ID")
    access_key_id: SecretStr = Field(validation_alias=AliasChoices("S3_ACCESS_KEY_ID", "R2_ACCESS_KEY_ID"))
    secret_access_key: SecretStr = Field(validation_alias=AliasChoices("S3_SECRET_ACCESS_KEY", "R2_SECRET_ACCESS_KEY"))
    bucket: str = Field("facegen", validation_alias=AliasChoices("S3_BUCKET", "R2_BUCKET"))
    region: str = "auto"
    public_base_url: str | None = Field(None, validation_alias=AliasChoices("S3_PUBLIC_BASE_URL",
                                                                            "R2_PUBLIC_BASE_URL"))
    presign_expiry_s: int = Field(3600, ge=1, le=604_800, validation_alias="S3_PRESIGN_EXPIRY_SECONDS")
    temp_presign_expiry_s: int = Field(900, ge=1, le=604_800, validation_alias="S3_TEMP_PRESIGN_EXPIRY_SECONDS")
    manage_lifecycle: bool = True
    create_bucket: bool = False
    temp_expiry_days: int = Field(1, ge=1, le=3650)
    reference_expiry_days: int = Field(7, ge=1, le=3650)
    result_expiry_days: int = Field(0, ge=0, le=36_500)
    max_attempts: int = Field(3, ge=1, le=10)
    # Connections open to the store at once for object requests (PUT, GET, HEAD); more requests wait for one.
    max_connections: int = Field(64, ge=1, le=4096)
    connect_timeout_s: float = Field(5.0, ge=0.1, le=120, validation_alias="S3_CONNECT_TIMEOUT_SECONDS")
    read_timeout_s: float = Field(30.0, ge=0.1, le=600, validation_alias="S3_READ_TIMEOUT_SECONDS")

    _urls = field_validator("endpoint_url", "public_base_url")(_http_url)

    @field_validator("bucket")
    @classmethod
    def _bucket_name(cls, bucket: str) -> str:
        if not _BUCKET.match(bucket):
            raise ValueError("is not a valid bucket name (3-63 lowercase letters, digits, dots and hyphens)")
        return bucket

    @model_validator(mode="before")
    @classmethod
    def _endpoint_set(cls, data: Any) -> Any:
        # Before the fields: of everything missing, the store's address is what to name first.
        if isinstance(data, dict) and not any(data.get(key) for key in _ENDPOINT_KEYS):
            raise ValueError(f"S3_ENDPOINT_URL is required but not set ({_ENDPOINT_HINT})")
        return data

    @property
    def endpoint(self) -> str:
        """The store's S3 API URL (R2's from R2_ACCOUNT_ID when no URL is set)."""
        return self.endpoint_url or f"https://{self.r2_account_id}.r2.cloudflarestorage.com"


class RunPodSettings(EnvSettings):
    """The face-swap endpoints and how the client talks to them: FACE_SWAP_* and RUNPOD_*."""

    model_config = SettingsConfigDict(env_prefix="FACE_SWAP_")

    api_key: SecretStr | None = Field(None, validation_alias="RUNPOD_API_KEY")
    api_base: str = Field(DEFAULT_RUNPOD_API_BASE, validation_alias="RUNPOD_API_BASE")
    # The primary endpoint; unset: swapping disabled.
    endpoint: str | None = None
    # Tried in order when the primary is down.
    backup_endpoints: CommaList = ()
    process_type: str = "single_image"
    deadline_s: float = Field(300.0, ge=1.0, le=86_400, validation_alias="FACE_SWAP_DEADLINE_SECONDS")
    status_wait_ms: int = Field(10_000, ge=0, le=300_000)
    poll_min_ms: int = Field(250, ge=10, le=600_000)
    poll_max_ms: int = Field(3000, ge=10, le=600_000)
    poll_ratio: float = Field(0.5, ge=0.0, le=10.0)
    http_timeout_s: float = Field(10.0, ge=0.1, le=300, validation_alias="FACE_SWAP_HTTP_TIMEOUT_SECONDS")
    cancel_timeout_s: float = Field(5.0, ge=0.1, le=60, validation_alias="FACE_SWAP_CANCEL_TIMEOUT_SECONDS")
    submit_attempts: int = Field(3, ge=1, le=20)
    rate_safety: float = Field(0.8, ge=0.01, le=1.0)
    breaker_failures: int = Field(5, ge=1, le=1000)
    breaker_cooldown_s: float = Field(30.0, ge=0.01, le=3600, validation_alias="FACE_SWAP_BREAKER_COOLDOWN_SECONDS")
    download_timeout_s: float = Field(30.0, ge=0.1, le=600, validation_alias="FACE_SWAP_DOWNLOAD_TIMEOUT_SECONDS")
    result_max_bytes: int = Field(SWAP_RESULT.max_bytes, ge=1024, le=512 * MiB)
    result_max_pixels: int = Field(SWAP_RESULT.max_pixels, ge=64)
    result_max_side: int = Field(SWAP_RESULT.max_side, ge=8)

    _api_base = field_validator("api_base")(_http_url)

    @model_validator(mode="after")
    def _endpoints(self) -> Self:
        if self.endpoint is None and self.backup_endpoints:
            raise ValueError("FACE_SWAP_BACKUP_ENDPOINTS is set but FACE_SWAP_ENDPOINT is not")
        for endpoint in self.endpoints:
            if not _ENDPOINT_ID.match(endpoint):
                raise ValueError(f"endpoint id {endpoint!r} in FACE_SWAP_ENDPOINT / FACE_SWAP_BACKUP_ENDPOINTS "
                                 "may only hold letters, digits, _ and -")
        if self.endpoints and self.api_key is None:
            raise ValueError("RUNPOD_API_KEY (or RUNPOD_API_KEY_FILE) is required when FACE_SWAP_ENDPOINT is set")
        if self.poll_max_ms < self.poll_min_ms:
            raise ValueError(f"FACE_SWAP_POLL_MAX_MS={self.poll_max_ms} is below "
                             f"FACE_SWAP_POLL_MIN_MS={self.poll_min_ms}")
        return self

    @property
    def endpoints(self) -> tuple[str, ...]:
        """The primary endpoint first, then the backups in order (each once); empty = swapping disabled."""
        return tuple(dict.fromkeys(((self.endpoint,) if self.endpoint else ()) + self.backup_endpoints))

    @property
    def enabled(self) -> bool:
        """True when at least one endpoint is configured."""
        return bool(self.endpoints)

    @property
    def poll_min_s(self) -> float:
        """The shortest gap between two status requests of one job, in seconds."""
        return self.poll_min_ms / 1000

    @property
    def poll_max_s(self) -> float:
        """The longest gap between two status requests of one job, in seconds."""
        return self.poll_max_ms / 1000

    @property
    def result_limits(self) -> ImageLimits:
        """What a worker's result may be."""
        return ImageLimits(max_bytes=self.result_max_bytes, max_pixels=self.result_max_pixels,
                           max_side=self.result_max_side, min_side=SWAP_RESULT.min_side)


# What FACE_SWAP_VERIFY=identity imports (the `identity` extra); checked at start, not imported here.
IDENTITY_MODULES = ("dlib", "face_recognition_models", "numpy")
IDENTITY_INSTALL_HINT = ("install the identity extra (pip install 'facegen[identity]'; for the swapper image, "
                         "docker build --build-arg SWAPPER_IDENTITY=true)")


class ResultCheckSettings(EnvSettings):
    """What a remote result must pass before it is called swapped: FACE_SWAP_VERIFY and the identity check."""

    model_config = SettingsConfigDict(env_prefix="FACE_SWAP_")

    # off: trust the endpoint; unchanged: refuse a result whose face is the target's (no model, ~1 ms);
    # identity: that, and refuse a face dlib does not recognise as the reference person.
    verify: Annotated[Literal["off", "unchanged", "identity"], Lowercase] = "unchanged"
    identity_threshold: float = Field(SAME_PERSON, gt=0.0, le=2.0)
    # Processes measuring identities (dlib holds the GIL while it computes a descriptor).
    identity_processes: int = Field(1, ge=1, le=64)

    @model_validator(mode="after")
    def _identity_installed(self) -> Self:
        if self.verify == "identity":
            missing = [name for name in IDENTITY_MODULES if importlib.util.find_spec(name) is None]
            if missing:
                raise ValueError(f"FACE_SWAP_VERIFY=identity needs {', '.join(missing)}, which this installation "
                                 f"lacks: {IDENTITY_INSTALL_HINT}")
        return self

    @property
    def unchanged(self) -> bool:
        """Whether a result is compared with its target."""
        return self.verify != "off"

    @property
    def identity(self) -> bool:
        """Whether the identity check runs."""
        return self.verify == "identity"


class Settings(ServerSettings):
    """Everything the swapper reads: SWAPPER_*, the storage and RunPod groups, REDIS_*."""

    model_config = SettingsConfigDict(env_prefix="SWAPPER_")

    listen: str = "127.0.0.1:50053"
    storage: StorageSettings
    runpod: RunPodSettings = Field(default_factory=RunPodSettings)
    checks: ResultCheckSettings = Field(default_factory=ResultCheckSettings)
    max_image_bytes: int = Field(STORED_IMAGE.max_bytes, ge=1024, le=512 * MiB)
    max_image_pixels: int = Field(STORED_IMAGE.max_pixels, ge=64)
    max_image_side: int = Field(STORED_IMAGE.max_side, ge=8)
    http_connections: int = Field(256, ge=8, le=65_536)
    storage_threads: int = Field(32, ge=2, le=1024)
    max_in_flight: int = Field(512, ge=1, le=100_000)
    # Shared state (resumable swaps' records, the rate limit) when REDIS_URL is set.
    redis: RedisSettings | None = None
    record_grace_s: float = Field(60.0, ge=1.0, le=86_400, validation_alias="SWAPPER_RECORD_GRACE_SECONDS")

    @model_validator(mode="after")
    def _inputs_outlive_the_deadline(self) -> Self:
        if self.storage.temp_presign_expiry_s < self.runpod.deadline_s:
            raise ValueError(
                f"S3_TEMP_PRESIGN_EXPIRY_SECONDS={self.storage.temp_presign_expiry_s} must be at least "
                f"FACE_SWAP_DEADLINE_SECONDS={self.runpod.deadline_s:g}: the worker may fetch its inputs "
                "until the deadline")
        return self

    @property
    def target_limits(self) -> ImageLimits:
        """What a target image (or a reference face) may be."""
        return ImageLimits(max_bytes=self.max_image_bytes, max_pixels=self.max_image_pixels,
                           max_side=self.max_image_side, min_side=STORED_IMAGE.min_side)
