"""Gateway settings, read once from the environment at start."""

from __future__ import annotations

import os
import socket
from dataclasses import dataclass, field

from services.common.config import ConfigError, Env, ServerSettings
from services.common.redis import RedisSettings

DEFAULT_LISTEN = "127.0.0.1:50051"
STORES = ("memory", "redis")


def default_instance() -> str:
    """This process's name among the gateway replicas: host name and process id."""
    return f"{socket.gethostname()}-{os.getpid()}"


@dataclass(frozen=True)
class Settings:
    """Everything the gateway reads from its environment (docs/gateway.md lists each variable)."""

    server: ServerSettings
    generator_address: str = "127.0.0.1:50052"
    swapper_address: str = "127.0.0.1:50053"
    # Jobs running at once, and jobs waiting for a slot beyond those; past both: RESOURCE_EXHAUSTED.
    max_running_jobs: int = 16
    max_queued_jobs: int = 64
    # Finished jobs (events and result) are kept this long for Get/Watch, then dropped.
    job_ttl_seconds: float = 3600.0
    # Most jobs kept at once; the oldest finished ones are dropped first.
    max_jobs: int = 2000
    # Most events kept per job for Watch replay.
    max_events_per_job: int = 1000
    # Swaps of one job's images that run at once.
    swap_concurrency: int = 4
    generate_timeout_seconds: float = 600.0
    swap_timeout_seconds: float = 300.0
    upload_timeout_seconds: float = 60.0
    # How long a call waits for an upstream that is not connected before failing UNAVAILABLE.
    connect_timeout_seconds: float = 5.0
    auth_token: str | None = None
    log_level: str = "INFO"
    # Where jobs live: this process ("memory") or a Redis shared by every replica ("redis").
    store: str = "memory"
    redis: RedisSettings | None = None
    # On SIGTERM, how long running jobs may go on before they are handed over (redis) or cancelled.
    drain_seconds: float = 30.0
    # How long a replica's hold on a job lasts without renewal; another replica resumes it after.
    lease_seconds: float = 3.0
    instance: str = field(default_factory=default_instance)

    @classmethod
    def from_env(cls, env: Env | None = None) -> Settings:
        """Reads the GATEWAY_* variables (and GENERATOR_ADDRESS, SWAPPER_ADDRESS)."""
        env = env or Env()
        settings = cls(
            server=ServerSettings.from_env("GATEWAY", DEFAULT_LISTEN, env),
            generator_address=env.get_str("GENERATOR_ADDRESS", cls.generator_address),
            swapper_address=env.get_str("SWAPPER_ADDRESS", cls.swapper_address),
            max_running_jobs=env.get_int("GATEWAY_MAX_RUNNING_JOBS", cls.max_running_jobs, minimum=1),
            max_queued_jobs=env.get_int("GATEWAY_MAX_QUEUED_JOBS", cls.max_queued_jobs, minimum=0),
            job_ttl_seconds=env.get_float("GATEWAY_JOB_TTL_SECONDS", cls.job_ttl_seconds, minimum=1.0),
            max_jobs=env.get_int("GATEWAY_MAX_JOBS", cls.max_jobs, minimum=1),
            max_events_per_job=env.get_int("GATEWAY_MAX_EVENTS_PER_JOB", cls.max_events_per_job,
                                           minimum=16),
            swap_concurrency=env.get_int("GATEWAY_SWAP_CONCURRENCY", cls.swap_concurrency,
                                         minimum=1, maximum=64),
            generate_timeout_seconds=env.get_float("GATEWAY_GENERATE_TIMEOUT_SECONDS",
                                                   cls.generate_timeout_seconds, minimum=0.1),
            swap_timeout_seconds=env.get_float("GATEWAY_SWAP_TIMEOUT_SECONDS", cls.swap_timeout_seconds,
                                               minimum=0.1),
            upload_timeout_seconds=env.get_float("GATEWAY_UPLOAD_TIMEOUT_SECONDS",
                                                 cls.upload_timeout_seconds, minimum=0.1),
            connect_timeout_seconds=env.get_float("GATEWAY_UPSTREAM_CONNECT_TIMEOUT_SECONDS",
                                                  cls.connect_timeout_seconds, minimum=0.1),
            auth_token=env.secret("GATEWAY_AUTH_TOKEN"),
            log_level=env.get_str("GATEWAY_LOG_LEVEL", cls.log_level).upper(),
            store=env.get_str("GATEWAY_STORE", cls.store).lower(),
            redis=RedisSettings.from_env(env),
            drain_seconds=env.get_float("GATEWAY_DRAIN_SECONDS", cls.drain_seconds, minimum=0.0),
            lease_seconds=env.get_float("GATEWAY_LEASE_SECONDS", cls.lease_seconds, minimum=0.5,
                                        maximum=300.0),
            instance=env.get_str("GATEWAY_INSTANCE", default_instance()),
        )
        settings.check()
        return settings

    def check(self) -> None:
        """Raises ConfigError for combinations that cannot work."""
        active = self.max_running_jobs + self.max_queued_jobs
        if self.max_jobs < active:
            raise ConfigError(
                f"GATEWAY_MAX_JOBS={self.max_jobs} must be at least GATEWAY_MAX_RUNNING_JOBS + "
                f"GATEWAY_MAX_QUEUED_JOBS = {active}, or active jobs could not be stored")
        if self.store not in STORES:
            raise ConfigError(f"GATEWAY_STORE={self.store!r} is not one of {', '.join(STORES)}")
        if self.store == "redis" and self.redis is None:
            raise ConfigError("GATEWAY_STORE=redis needs REDIS_URL (redis://host:port/db or rediss://...)")
        if self.log_level not in {"DEBUG", "INFO", "WARNING", "ERROR"}:
            raise ConfigError(f"GATEWAY_LOG_LEVEL={self.log_level!r} is not DEBUG, INFO, WARNING or ERROR")

    @property
    def swap_remote_deadline_ms(self) -> int:
        """Deadline the swapper gets for the remote swap: 3/4 of the Swap call's deadline,
        so it falls back to the plain image (with a reason) before the call itself times out."""
        return max(1, int(self.swap_timeout_seconds * 750))
