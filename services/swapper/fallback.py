"""Why a swap fell back to the original image."""

from __future__ import annotations

import re

from facegen.v1 import common_pb2
from services.common.names import reason_name

Reason = int  # a common_pb2.FallbackReason value

DISABLED = common_pb2.FALLBACK_REASON_DISABLED
ENDPOINT_UNAVAILABLE = common_pb2.FALLBACK_REASON_ENDPOINT_UNAVAILABLE
KEY_REJECTED = common_pb2.FALLBACK_REASON_KEY_REJECTED
RATE_LIMITED = common_pb2.FALLBACK_REASON_RATE_LIMITED
REMOTE_FAILED = common_pb2.FALLBACK_REASON_REMOTE_FAILED
TIMED_OUT = common_pb2.FALLBACK_REASON_TIMED_OUT
CANCELLED = common_pb2.FALLBACK_REASON_CANCELLED
NO_FACE_FOUND = common_pb2.FALLBACK_REASON_NO_FACE_FOUND
UNDECODABLE_RESULT = common_pb2.FALLBACK_REASON_UNDECODABLE_RESULT
JOB_EXPIRED = common_pb2.FALLBACK_REASON_JOB_EXPIRED
PROTOCOL_ERROR = common_pb2.FALLBACK_REASON_PROTOCOL_ERROR
SWAP_UNCHANGED = common_pb2.FALLBACK_REASON_SWAP_UNCHANGED
SWAP_NOT_LIKE_REFERENCE = common_pb2.FALLBACK_REASON_SWAP_NOT_LIKE_REFERENCE

KEY_REJECTED_MESSAGE = "the RunPod API key was rejected"

# How workers in the wild say that they found no face to swap.
_NO_FACE = re.compile(
    r"no\s+faces?\b|faces?\s+(?:was\s+|were\s+)?not\s+(?:found|detected)|"
    r"(?:could\s*n[o']t|cannot|can't|unable\s+to|failed\s+to)\s+(?:find|detect)\s+(?:a\s+|any\s+)?faces?|"
    r"no_face|face_not_found",
    re.IGNORECASE)


class SwapFallback(Exception):
    """The swap cannot be done; the original image is returned with ``reason`` and ``message``."""

    def __init__(self, reason: Reason, message: str, identity_distance: float | None = None) -> None:
        super().__init__(message)
        self.reason = reason
        self.message = message
        # d(reference, result), when the identity check measured it before refusing the result.
        self.identity_distance = identity_distance

    @property
    def reason_name(self) -> str:
        """The enum value's name without its prefix, for logs."""
        return reason_name(self.reason)


def failure_reason(error_text: str) -> Reason:
    """NO_FACE_FOUND when a worker's error says that no face was found, else REMOTE_FAILED."""
    return NO_FACE_FOUND if _NO_FACE.search(error_text) else REMOTE_FAILED


def clip(text: str, limit: int = 300) -> str:
    """One line of at most ``limit`` characters, for messages built from remote text."""
    flat = " ".join(str(text).split())
    return flat if len(flat) <= limit else flat[: limit - 1] + "…"
