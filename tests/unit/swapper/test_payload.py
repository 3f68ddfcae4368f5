"""The /run payload, its policy, and how failures of several endpoints combine."""

from __future__ import annotations

import pytest

from services.common.config import Env
from services.common.names import reason_name
from services.swapper.fallback import (
    ENDPOINT_UNAVAILABLE,
    KEY_REJECTED,
    RATE_LIMITED,
    TIMED_OUT,
)
from services.swapper.jobs import SwapInputs
from services.swapper.settings import Settings
from services.swapper.submit import build_payload, combine

pytestmark = pytest.mark.unit


def settings(**env: str) -> Settings:
    return Settings.from_env(Env({"FACE_SWAP_ENDPOINT": "ep", "RUNPOD_API_KEY": "k" * 24, **env}))


def test_payload_is_the_original_systems_input() -> None:
    payload = build_payload(settings().runpod, SwapInputs("https://s/src", "https://s/tgt", True, False), 300)
    assert payload["input"] == {
        "process_type": "single_image",
        "source_file": "https://s/src",
        "target_file": "https://s/tgt",
        "options": {"mouth_mask": True, "use_face_enhancer": False},
    }


def test_process_type_is_configurable_and_many_faces_only_when_asked() -> None:
    payload = build_payload(settings(FACE_SWAP_PROCESS_TYPE="single-image").runpod,
                            SwapInputs("s", "t", many_faces=True), 60)
    assert payload["input"]["process_type"] == "single-image"
    assert payload["input"]["options"]["many_faces"] is True


@pytest.mark.parametrize("remaining", [2.0, 30.0, 300.0, 3000.0])
def test_execution_timeout_ends_before_our_deadline(remaining: float) -> None:
    policy = build_payload(settings().runpod, SwapInputs("s", "t"), remaining)["policy"]
    assert policy["executionTimeout"] < remaining * 1000
    assert policy["executionTimeout"] >= 1000
    assert policy["ttl"] >= remaining * 1000


def test_combined_failures() -> None:
    rejected = combine([(KEY_REJECTED, "a: 401"), (KEY_REJECTED, "b: 403")])
    assert rejected.reason == KEY_REJECTED
    assert "the RunPod API key was rejected" in rejected.message
    mixed = combine([(KEY_REJECTED, "a: 401"), (ENDPOINT_UNAVAILABLE, "b: refused")])
    assert mixed.reason == ENDPOINT_UNAVAILABLE and "a: 401" in mixed.message and "b: refused" in mixed.message
    assert combine([(RATE_LIMITED, "a"), (RATE_LIMITED, "b")]).reason == RATE_LIMITED
    assert combine([(RATE_LIMITED, "a"), (TIMED_OUT, "b")]).reason == TIMED_OUT
    assert combine([]).reason == ENDPOINT_UNAVAILABLE
    assert reason_name(TIMED_OUT) == "timed_out"
