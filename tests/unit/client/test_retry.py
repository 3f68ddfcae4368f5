"""Backoff, outage budget and deadline of the client's retries (a fake clock and fake dice)."""

from __future__ import annotations

import grpc
import pytest

from services.client import GatewayError, RetryPolicy
from services.client.retry import Retrier
from tests.unit.client.scripted_gateway import RpcError

pytestmark = pytest.mark.unit

UNAVAILABLE = grpc.StatusCode.UNAVAILABLE


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def retrier(policy: RetryPolicy, clock: Clock, timeout: float | None = None, dice: float = 1.0) -> Retrier:
    return Retrier.within(policy, timeout, clock=clock, rng=lambda: dice)


def test_the_delay_grows_to_its_cap_and_is_jittered_below_it() -> None:
    policy = RetryPolicy(initial_backoff=0.1, max_backoff=1.0, multiplier=2.0, give_up_after=60)
    assert [policy.backoff_cap(n) for n in range(6)] == pytest.approx([0.1, 0.2, 0.4, 0.8, 1.0, 1.0])
    clock = Clock()
    top = retrier(policy, clock, dice=1.0)
    assert [top.next_delay(UNAVAILABLE, "down") for _ in range(5)] == pytest.approx([0.1, 0.2, 0.4, 0.8, 1.0])
    half = retrier(policy, clock, dice=0.5)
    assert [half.next_delay(UNAVAILABLE, "down") for _ in range(3)] == pytest.approx([0.05, 0.1, 0.2])


def test_a_success_ends_the_outage_and_starts_the_backoff_again() -> None:
    clock = Clock()
    retry = retrier(RetryPolicy(initial_backoff=0.1, max_backoff=1.0, give_up_after=5), clock)
    for _ in range(3):
        retry.next_delay(UNAVAILABLE, "down")
    clock.now += 4.9
    retry.succeeded()
    clock.now += 1.0
    assert retry.next_delay(UNAVAILABLE, "down again") == pytest.approx(0.1), "a fresh budget and backoff"


def test_the_outage_budget_ends_the_retries_with_the_last_error_and_where_it_stopped() -> None:
    clock = Clock()
    retry = retrier(RetryPolicy(initial_backoff=0.5, max_backoff=2.0, give_up_after=3.0), clock)
    assert retry.next_delay(UNAVAILABLE, "socket closed") == pytest.approx(0.5)
    clock.now += 2.5
    assert retry.next_delay(UNAVAILABLE, "socket closed") == pytest.approx(0.5), "cut to the budget left"
    clock.now += 0.5
    with pytest.raises(GatewayError) as gave_up:
        retry.next_delay(UNAVAILABLE, "socket closed", job_id="j1", last_seq=7)
    error = gave_up.value
    assert error.code == UNAVAILABLE and (error.job_id, error.last_seq) == ("j1", 7)
    assert error.details == "socket closed (gave up after 3.0 s and 3 attempts)"


@pytest.mark.parametrize("code", [grpc.StatusCode.INVALID_ARGUMENT, grpc.StatusCode.RESOURCE_EXHAUSTED,
                                  grpc.StatusCode.ALREADY_EXISTS, grpc.StatusCode.UNAUTHENTICATED,
                                  grpc.StatusCode.INTERNAL])
def test_other_failures_are_raised_at_once(code: grpc.StatusCode) -> None:
    with pytest.raises(GatewayError) as refused:
        retrier(RetryPolicy(), Clock()).next_delay(code, "no")
    assert (refused.value.code, refused.value.details) == (code, "no")


def test_the_callers_deadline_cuts_the_delay_and_then_ends_the_retries() -> None:
    clock = Clock()
    retry = retrier(RetryPolicy(initial_backoff=2.0, max_backoff=2.0, give_up_after=60), clock, timeout=3.0)
    assert retry.attempt_timeout() == pytest.approx(3.0)
    clock.now += 2.0
    assert retry.next_delay(UNAVAILABLE, "down") == pytest.approx(1.0)
    assert retry.attempt_timeout() == pytest.approx(1.0)
    clock.now += 1.0
    with pytest.raises(GatewayError) as late:
        retry.next_delay(UNAVAILABLE, "down")
    assert late.value.code == grpc.StatusCode.DEADLINE_EXCEEDED
    assert "deadline" in late.value.details


def test_a_unary_attempt_that_timed_out_is_tried_again_within_the_deadline() -> None:
    clock = Clock()
    retry = retrier(RetryPolicy(initial_backoff=0.1, call_timeout=5.0), clock, timeout=20.0)
    assert retry.attempt_timeout() == pytest.approx(5.0)
    assert retry.unary_delay(RpcError(grpc.StatusCode.DEADLINE_EXCEEDED)) == pytest.approx(0.1)
    clock.now += 20.0
    with pytest.raises(GatewayError) as late:
        retry.unary_delay(RpcError(grpc.StatusCode.DEADLINE_EXCEEDED))
    assert late.value.code == grpc.StatusCode.DEADLINE_EXCEEDED


@pytest.mark.parametrize("fields", [{"initial_backoff": 0}, {"initial_backoff": 3, "max_backoff": 2},
                                    {"multiplier": 0.5}, {"give_up_after": -1}, {"call_timeout": 0}])
def test_a_policy_that_makes_no_sense_is_refused(fields: dict[str, float]) -> None:
    with pytest.raises(ValueError):
        RetryPolicy(**fields)
