"""Jittered backoff and Retry-After parsing."""

from __future__ import annotations

import random
from email.utils import formatdate

import pytest

from services.swapper.backoff import Backoff, parse_retry_after
from services.swapper.polling import PollSchedule

pytestmark = pytest.mark.unit


def test_backoff_doubles_up_to_the_cap() -> None:
    backoff = Backoff(base=0.1, factor=2.0, cap=1.0)
    assert [backoff.ceiling(n) for n in range(6)] == pytest.approx([0.1, 0.2, 0.4, 0.8, 1.0, 1.0])


def test_backoff_delays_are_jittered_within_half_to_full_ceiling() -> None:
    backoff = Backoff(base=0.2, factor=2.0, cap=5.0)
    rng = random.Random(7)
    for attempt in range(8):
        delays = [backoff.delay(attempt, rng) for _ in range(200)]
        ceiling = backoff.ceiling(attempt)
        assert min(delays) >= ceiling / 2
        assert max(delays) <= ceiling
        assert len({round(d, 6) for d in delays}) > 150, "delays must be spread, not all equal"


def test_retry_after_in_seconds() -> None:
    assert parse_retry_after("7", now_epoch=0) == 7.0
    assert parse_retry_after(" 1.5 ", now_epoch=0) == 1.5


def test_retry_after_as_http_date() -> None:
    now = 1_800_000_000.0
    assert parse_retry_after(formatdate(now + 30, usegmt=True), now_epoch=now) == pytest.approx(30, abs=1)


@pytest.mark.parametrize("value", [None, "", "soon", "Mon, 99 Foo 2020"])
def test_retry_after_malformed_is_none(value: str | None) -> None:
    assert parse_retry_after(value, now_epoch=0) is None


def test_retry_after_is_never_negative_and_capped() -> None:
    assert parse_retry_after("-5", now_epoch=0) == 0.0
    assert parse_retry_after(formatdate(100, usegmt=True), now_epoch=1_000) == 0.0
    assert parse_retry_after("86400", now_epoch=0, cap=60) == 60


def test_poll_schedule_grows_with_age_within_bounds() -> None:
    schedule = PollSchedule(minimum=0.25, maximum=3.0, ratio=0.5)
    assert schedule.gap(0) == 0.25
    assert schedule.gap(2.0) == 1.0
    assert schedule.gap(100) == 3.0


def test_fixed_schedule_of_the_first_version() -> None:
    schedule = PollSchedule(minimum=5, maximum=5, ratio=0)
    assert {schedule.gap(age) for age in (0, 1, 60)} == {5}
