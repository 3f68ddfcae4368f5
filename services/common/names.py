"""Short lower-case names of the contract's enum values, for logs, messages and the CLI.

``STAGE_GENERATING`` → ``generating``, ``FACE_SWAP_METHOD_EXTERNAL_API`` →
``external_api``, ``FALLBACK_REASON_NO_FACE_FOUND`` → ``no_face_found``.
"""

from __future__ import annotations

from google.protobuf.internal.enum_type_wrapper import EnumTypeWrapper

from facegen.v1 import common_pb2, gateway_pb2


def _short_names(enum: EnumTypeWrapper, prefix: str) -> dict[int, str]:
    return {value: name.removeprefix(prefix).lower() for name, value in enum.items()}


_STAGES = _short_names(gateway_pb2.Stage, "STAGE_")
_METHODS = _short_names(common_pb2.FaceSwapMethod, "FACE_SWAP_METHOD_")
_REASONS = _short_names(common_pb2.FallbackReason, "FALLBACK_REASON_")


def stage_name(stage: int) -> str:
    """``generating`` for STAGE_GENERATING; ``unknown`` for a value this code does not know."""
    return _STAGES.get(stage, "unknown")


def method_name(method: int) -> str:
    """``external_api`` / ``local`` / ``none`` for a FaceSwapMethod value."""
    return _METHODS.get(method, "unknown")


def reason_name(reason: int) -> str:
    """``no_face_found`` etc. for a FallbackReason value."""
    return _REASONS.get(reason, "unknown")
