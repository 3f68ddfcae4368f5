"""Short names of the contract's enum values."""

import pytest

from facegen.v1 import common_pb2, gateway_pb2
from services.common.names import method_name, reason_name, stage_name

pytestmark = pytest.mark.unit


def test_every_enum_value_has_a_short_lower_case_name() -> None:
    assert stage_name(gateway_pb2.STAGE_GENERATING) == "generating"
    assert method_name(common_pb2.FACE_SWAP_METHOD_EXTERNAL_API) == "external_api"
    assert reason_name(common_pb2.FALLBACK_REASON_NO_FACE_FOUND) == "no_face_found"
    for value in common_pb2.FallbackReason.values():
        assert reason_name(value).islower() and "fallback" not in reason_name(value)


def test_values_from_a_newer_contract_are_unknown_not_errors() -> None:
    assert stage_name(99) == method_name(99) == reason_name(99) == "unknown"
