"""Admission limits, the percent weighting, and settings parsing."""

from __future__ import annotations

import pytest

from facegen.v1 import gateway_pb2
from services.common.config import ConfigError
from services.gateway.admission import AdmissionLimits
from services.gateway.progress import GENERATION_END, SWAPPING_END, Progress, StageClock
from services.gateway.settings import Settings

pytestmark = pytest.mark.unit


def test_admission_limits_say_where_a_new_job_stands() -> None:
    limits = AdmissionLimits(max_running=2, max_queued=3)
    assert limits.max_admitted == 5
    assert limits.queue_ahead(running=1, waiting=0) == -1, "a free slot: it runs at once"
    assert limits.queue_ahead(running=2, waiting=0) == 0, "next in line"
    assert limits.queue_ahead(running=2, waiting=2) == 2
    assert "2 jobs running, 3 queued, queue limit 3" in limits.refusal(2, 3)


def test_percent_is_weighted_by_stage_and_never_goes_backwards() -> None:
    progress = Progress(num_images=2, template_mode=False)
    assert progress.percent == 0
    progress.step(5, 10)
    assert progress.percent == pytest.approx(GENERATION_END / 2)
    progress.step(3, 10)  # a late or repeated step must not move it back
    assert progress.percent == pytest.approx(GENERATION_END / 2)
    progress.generation_done()
    assert progress.percent == pytest.approx(GENERATION_END)
    progress.swap_event(0, "result")
    assert progress.percent == pytest.approx(GENERATION_END + (SWAPPING_END - GENERATION_END) / 2)
    progress.swap_event(0, "stored")
    progress.swap_event(1, "IN_PROGRESS")
    before = progress.percent
    progress.swap_event(1, "stored")
    assert progress.percent == before
    progress.image(1, 1.0)
    progress.finalizing()
    assert progress.percent == pytest.approx(SWAPPING_END)
    progress.done()
    assert progress.percent == 100


def test_template_jobs_spread_swapping_over_the_whole_range() -> None:
    progress = Progress(num_images=1, template_mode=True)
    progress.swap_event(0, "IN_PROGRESS")
    assert progress.percent == pytest.approx(SWAPPING_END * 0.6)


def test_stage_clock_measures_first_start_to_last_end() -> None:
    clock = StageClock()
    clock.start(gateway_pb2.STAGE_SWAPPING)
    clock.start(gateway_pb2.STAGE_GENERATING)
    clock.stop(gateway_pb2.STAGE_GENERATING)
    timings = clock.timings()
    assert [t.stage for t in timings] == [gateway_pb2.STAGE_GENERATING, gateway_pb2.STAGE_SWAPPING]
    assert all(t.duration_ms >= 0 for t in timings)


def test_settings_read_every_variable() -> None:
    settings = Settings.from_env({
        "GATEWAY_LISTEN": "0.0.0.0:6000", "GENERATOR_ADDRESS": "gen:1", "SWAPPER_ADDRESS": "swap:2",
        "GATEWAY_MAX_RUNNING_JOBS": "3", "GATEWAY_MAX_QUEUED_JOBS": "4", "GATEWAY_JOB_TTL_SECONDS": "30",
        "GATEWAY_MAX_JOBS": "50", "GATEWAY_SWAP_CONCURRENCY": "2", "GATEWAY_GENERATE_TIMEOUT_SECONDS": "9",
        "GATEWAY_SWAP_TIMEOUT_SECONDS": "8", "GATEWAY_UPLOAD_TIMEOUT_SECONDS": "7",
        "GATEWAY_UPSTREAM_CONNECT_TIMEOUT_SECONDS": "1.5", "GATEWAY_AUTH_TOKEN": "s3cret-token",
        "GATEWAY_MAX_EVENTS_PER_JOB": "64", "GATEWAY_LOG_LEVEL": "debug", "GATEWAY_STORE": "Redis",
        "REDIS_URL": "rediss://:pw@redis.internal:6380/2", "REDIS_CA_FILE": "/etc/ca.pem",
        "GATEWAY_DRAIN_SECONDS": "45", "GATEWAY_LEASE_SECONDS": "2.5", "GATEWAY_INSTANCE": "gateway-7f9c",
    })
    assert settings.listen == "0.0.0.0:6000"
    assert (settings.generator_address, settings.swapper_address) == ("gen:1", "swap:2")
    assert (settings.max_running_jobs, settings.max_queued_jobs, settings.max_jobs) == (3, 4, 50)
    assert (settings.job_ttl_seconds, settings.swap_concurrency, settings.max_events_per_job) == (30, 2, 64)
    assert (settings.generate_timeout_seconds, settings.swap_timeout_seconds) == (9, 8)
    assert (settings.upload_timeout_seconds, settings.connect_timeout_seconds) == (7, 1.5)
    assert settings.auth_token is not None and settings.auth_token.get_secret_value() == "s3cret-token"
    assert settings.log_level == "DEBUG"
    assert settings.swap_remote_deadline_ms == 6000
    assert (settings.store, settings.drain_seconds, settings.lease_seconds, settings.instance) == (
        "redis", 45, 2.5, "gateway-7f9c")
    assert settings.redis is not None
    assert (settings.redis.display_url, settings.redis.ca_file) == (
        "rediss://:***@redis.internal:6380/2", "/etc/ca.pem")
    assert "pw" not in repr(settings)


def test_settings_defaults_and_bad_combinations() -> None:
    settings = Settings.from_env({})
    assert settings.listen == "127.0.0.1:50051"
    assert settings.generator_address == "127.0.0.1:50052"
    assert settings.swapper_address == "127.0.0.1:50053"
    assert settings.auth_token is None
    with pytest.raises(ConfigError, match="GATEWAY_MAX_JOBS=5 must be at least"):
        Settings.from_env({"GATEWAY_MAX_JOBS": "5"})
    with pytest.raises(ConfigError, match=r"^GATEWAY_MAX_RUNNING_JOBS='0' is outside the allowed range \[1, 100000\]$"):
        Settings.from_env({"GATEWAY_MAX_RUNNING_JOBS": "0"})
    assert (settings.store, settings.redis) == ("memory", None)
    with pytest.raises(ConfigError, match="GATEWAY_STORE=redis needs REDIS_URL"):
        Settings.from_env({"GATEWAY_STORE": "redis"})
    with pytest.raises(ConfigError, match=r"^GATEWAY_STORE='etcd' is not one of memory, redis$"):
        Settings.from_env({"GATEWAY_STORE": "etcd"})
    with pytest.raises(ConfigError, match="REDIS_URL=<hidden> does not start with redis://, rediss:// or unix://"):
        Settings.from_env({"GATEWAY_STORE": "redis", "REDIS_URL": "http://x"})
