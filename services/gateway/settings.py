"""Gateway settings, read once from the environment at start (docs/gateway.md lists each variable)."""

from __future__ import annotations

import os
import socket
from pathlib import Path
from typing import Annotated, Literal, Self

from pydantic import AliasChoices, Field, SecretStr, model_validator
from pydantic_settings import SettingsConfigDict

from services.common.config import LogLevel, Lowercase, ServerSettings, tls_variables
from services.common.redis import RedisSettings
from services.common.tls_files import TlsFiles, check_client_files


def default_instance() -> str:
    """This process's name among the gateway replicas: host name and process id."""
    return f"{socket.gethostname()}-{os.getpid()}"


class Settings(ServerSettings):
    """Everything the gateway reads: GATEWAY_*, GENERATOR_ADDRESS, SWAPPER_ADDRESS, REDIS_*."""

    model_config = SettingsConfigDict(env_prefix="GATEWAY_")

    listen: str = "127.0.0.1:50051"
    log_level: LogLevel = Field("INFO", validation_alias=AliasChoices("GATEWAY_LOG_LEVEL", "LOG_LEVEL"))
    generator_address: str = Field("127.0.0.1:50052", validation_alias="GENERATOR_ADDRESS")
    swapper_address: str = Field("127.0.0.1:50053", validation_alias="SWAPPER_ADDRESS")
    # Jobs running at once, and jobs waiting for a slot beyond those; past both: RESOURCE_EXHAUSTED.
    max_running_jobs: int = Field(16, ge=1, le=100_000)
    max_queued_jobs: int = Field(64, ge=0, le=1_000_000)
    # Finished jobs (events and result) are kept this long for Get/Watch, then dropped.
    job_ttl_seconds: float = Field(3600.0, ge=1.0)
    # Most jobs kept at once; the oldest finished ones are dropped first.
    max_jobs: int = Field(2000, ge=1)
    # Most events kept per job for Watch replay.
    max_events_per_job: int = Field(1000, ge=16)
    # Swaps of one job's images that run at once.
    swap_concurrency: int = Field(4, ge=1, le=64)
    generate_timeout_seconds: float = Field(600.0, ge=0.1)
    swap_timeout_seconds: float = Field(300.0, ge=0.1)
    upload_timeout_seconds: float = Field(60.0, ge=0.1)
    # How long a call waits for an upstream that is not connected before failing UNAVAILABLE.
    connect_timeout_seconds: float = Field(5.0, ge=0.1, validation_alias="GATEWAY_UPSTREAM_CONNECT_TIMEOUT_SECONDS")
    # Named bearer tokens, one ``name: token`` per line, re-read when the file changes (services/gateway/auth.py).
    tokens_file: Path | None = None
    # The older form: one token (caller "default"), read once. Callers send ``authorization: Bearer <token>``.
    auth_token: SecretStr | None = None
    # How often the tokens file and the upstream client certificate are looked at for changes.
    reload_seconds: float = Field(5.0, ge=0.05, le=3600.0)
    # TLS towards the generator and the swapper: the client certificate and key the gateway presents
    # (required by upstreams that have a CA set), and the CA that signs their server certificates.
    upstream_tls_cert_file: Path | None = None
    upstream_tls_key_file: Path | None = None
    upstream_tls_ca_file: Path | None = None
    # Where jobs live: this process ("memory") or a Redis shared by every replica ("redis").
    store: Annotated[Literal["memory", "redis"], Lowercase] = "memory"
    redis: RedisSettings | None = None
    # On SIGTERM, how long running jobs may go on before they are handed over (redis) or cancelled.
    drain_seconds: float = Field(30.0, ge=0.0)
    # How long a replica's hold on a job lasts without renewal; another replica resumes it after.
    lease_seconds: float = Field(3.0, ge=0.5, le=300.0)
    instance: str = Field(default_factory=default_instance)

    @model_validator(mode="after")
    def _combinations(self) -> Self:
        active = self.max_running_jobs + self.max_queued_jobs
        if self.max_jobs < active:
            raise ValueError(
                f"GATEWAY_MAX_JOBS={self.max_jobs} must be at least GATEWAY_MAX_RUNNING_JOBS + "
                f"GATEWAY_MAX_QUEUED_JOBS = {active}, or active jobs could not be stored")
        if self.store == "redis" and self.redis is None:
            raise ValueError("GATEWAY_STORE=redis needs REDIS_URL (redis://host:port/db or rediss://...)")
        if self.tokens_file is not None and self.auth_token is not None:
            raise ValueError("GATEWAY_TOKENS_FILE and GATEWAY_AUTH_TOKEN (or GATEWAY_AUTH_TOKEN_FILE) are both set: "
                             "use one (the tokens file holds any number of named tokens)")
        check_client_files(self.upstream_tls)
        return self

    @property
    def upstream_tls(self) -> TlsFiles:
        """The files of the gateway's channels to the generator and the swapper."""
        return TlsFiles(self.upstream_tls_cert_file, self.upstream_tls_key_file, self.upstream_tls_ca_file,
                        variables=tls_variables(type(self), "upstream_tls_"))

    @property
    def swap_remote_deadline_ms(self) -> int:
        """Deadline the swapper gets for the remote swap: 3/4 of the Swap call's deadline,
        so it falls back to the plain image (with a reason) before the call itself times out."""
        return max(1, int(self.swap_timeout_seconds * 750))
