"""Admission limits, the percent weighting, and settings parsing."""

from __future__ import annotations

import asyncio

import pytest

from facegen.v1 import gateway_pb2
from services.common.config import ConfigError, Env
from services.common.errors import ResourceExhausted
from services.gateway.admission import Admission
from services.gateway.progress import GENERATION_END, SWAPPING_END, Progress, StageClock
from services.gateway.settings import Settings

pytestmark = pytest.mark.unit


async def test_admission_runs_n_queues_q_and_refuses_the_rest() -> None:
    admission = Admission(max_running=1, max_queued=1)
    admission.reserve()
    admission.reserve()
    with pytest.raises(ResourceExhausted, match="at capacity"):
        admission.reserve()
    first_in = asyncio.Event()
    release_first = asyncio.Event()

    async def first() -> None:
        async with admission.slot():
            first_in.set()
            await release_first.wait()

    async def second() -> None:
        async with admission.slot():
            pass

    one = asyncio.create_task(first())
    await first_in.wait()
    two = asyncio.create_task(second())
    await asyncio.sleep(0)
    assert (admission.running, admission.waiting, admission.backlog) == (1, 1, 1)
    assert not two.done()
    release_first.set()
    await asyncio.wait_for(asyncio.gather(one, two), 5)
    assert (admission.running, admission.waiting) == (0, 0)
    admission.reserve()
    admission.release_unused()
    assert admission.waiting == 0


async def test_a_job_cancelled_while_waiting_gives_its_place_back() -> None:
    admission = Admission(max_running=1, max_queued=1)
    admission.reserve()
    admission.reserve()
    hold = asyncio.Event()

    async def holder() -> None:
        async with admission.slot():
            await hold.wait()

    async def waiter() -> None:
        async with admission.slot():
            raise AssertionError("never gets a slot")

    one = asyncio.create_task(holder())
    await asyncio.sleep(0)
    two = asyncio.create_task(waiter())
    await asyncio.sleep(0)
    two.cancel()
    with pytest.raises(asyncio.CancelledError):
        await two
    admission.reserve()  # the cancelled waiter's place is free again
    hold.set()
    await one


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
    settings = Settings.from_env(Env({
        "GATEWAY_LISTEN": "0.0.0.0:6000", "GENERATOR_ADDRESS": "gen:1", "SWAPPER_ADDRESS": "swap:2",
        "GATEWAY_MAX_RUNNING_JOBS": "3", "GATEWAY_MAX_QUEUED_JOBS": "4", "GATEWAY_JOB_TTL_SECONDS": "30",
        "GATEWAY_MAX_JOBS": "50", "GATEWAY_SWAP_CONCURRENCY": "2", "GATEWAY_GENERATE_TIMEOUT_SECONDS": "9",
        "GATEWAY_SWAP_TIMEOUT_SECONDS": "8", "GATEWAY_UPLOAD_TIMEOUT_SECONDS": "7",
        "GATEWAY_UPSTREAM_CONNECT_TIMEOUT_SECONDS": "1.5", "GATEWAY_AUTH_TOKEN": "s3cret-token",
        "GATEWAY_MAX_EVENTS_PER_JOB": "64", "GATEWAY_LOG_LEVEL": "debug",
    }))
    assert settings.server.listen == "0.0.0.0:6000"
    assert (settings.generator_address, settings.swapper_address) == ("gen:1", "swap:2")
    assert (settings.max_running_jobs, settings.max_queued_jobs, settings.max_jobs) == (3, 4, 50)
    assert (settings.job_ttl_seconds, settings.swap_concurrency, settings.max_events_per_job) == (30, 2, 64)
    assert (settings.generate_timeout_seconds, settings.swap_timeout_seconds) == (9, 8)
    assert (settings.upload_timeout_seconds, settings.connect_timeout_seconds) == (7, 1.5)
    assert settings.auth_token == "s3cret-token"
    assert settings.log_level == "DEBUG"
    assert settings.swap_remote_deadline_ms == 6000


def test_settings_defaults_and_bad_combinations() -> None:
    settings = Settings.from_env(Env({}))
    assert settings.server.listen == "127.0.0.1:50051"
    assert settings.generator_address == "127.0.0.1:50052"
    assert settings.swapper_address == "127.0.0.1:50053"
    assert settings.auth_token is None
    with pytest.raises(ConfigError, match="GATEWAY_MAX_JOBS=5 must be at least"):
        Settings.from_env(Env({"GATEWAY_MAX_JOBS": "5"}))
    with pytest.raises(ConfigError, match="GATEWAY_MAX_RUNNING_JOBS"):
        Settings.from_env(Env({"GATEWAY_MAX_RUNNING_JOBS": "0"}))
