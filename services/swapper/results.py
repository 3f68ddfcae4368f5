"""Reading a face-swap worker's output: every variant workers in the wild use.

Success is ``{"result": "<base64>"}`` (raw, or a ``data:image/...;base64,``
URI), ``{"result_url": ...}`` / ``{"url": ...}``, or the bare string itself.
Failure is ``{"success": false, "error": ...}`` or an ``error`` with no
result. Whatever comes back is checked as an image (real image, dimensions
within limits, no decompression bomb) before anyone stores it: a result we
cannot trust becomes a fallback with a reason, never a made-up image. What it
shows is checked next (``verify.py``).
"""

from __future__ import annotations

import binascii
import re
from dataclasses import dataclass
from typing import Any

from services.common.errors import InvalidInput
from services.common.images import ImageInfo, ImageLimits, decode_image
from services.swapper.fallback import (
    PROTOCOL_ERROR,
    UNDECODABLE_RESULT,
    SwapFallback,
    clip,
    failure_reason,
)
from services.swapper.unchanged import Fingerprint, fingerprint

_DATA_URI = re.compile(r"^data:([^,]*?),", re.IGNORECASE | re.DOTALL)
_URL = re.compile(r"^https?://", re.IGNORECASE)
_URLSAFE = str.maketrans("-_", "+/")


@dataclass(frozen=True)
class InlineResult:
    """The image bytes were in the output (already base64-decoded)."""

    data: bytes


@dataclass(frozen=True)
class UrlResult:
    """The output names a URL to download the image from."""

    url: str


def interpret_output(output: Any, max_bytes: int) -> InlineResult | UrlResult:
    """Reads the ``output`` of a COMPLETED job.

    Raises SwapFallback with REMOTE_FAILED / NO_FACE_FOUND when the worker
    reports a failure, UNDECODABLE_RESULT when the result is not decodable
    base64 or is too large, PROTOCOL_ERROR when there is no result at all.
    """
    if output is None:
        raise SwapFallback(PROTOCOL_ERROR, "the remote job COMPLETED without an output")
    if isinstance(output, str):
        return _from_text(output, max_bytes)
    if not isinstance(output, dict):
        raise SwapFallback(PROTOCOL_ERROR,
                           f"the remote job's output is a {type(output).__name__}, not an object")
    if output.get("success") is False:
        raise _worker_failure(output, "the worker reported success=false")
    result = output.get("result")
    if isinstance(result, str) and result.strip():
        return _from_text(result, max_bytes)
    for key in ("result_url", "url"):
        value = output.get(key)
        if isinstance(value, str) and value.strip():
            return _as_url(value.strip(), key)
    if output.get("error"):
        raise _worker_failure(output, "the worker reported an error")
    keys = ", ".join(sorted(str(key) for key in output)) or "none"
    raise SwapFallback(PROTOCOL_ERROR,
                       f"the remote job's output has no result, result_url or url (keys: {clip(keys, 120)})")


def failure_from_error(error: Any, default: str) -> SwapFallback:
    """The fallback for a FAILED job (or a failed output) whose error is ``error``."""
    text = _error_text(error) or default
    return SwapFallback(failure_reason(text), f"the face-swap worker failed: {clip(text)}")


def _worker_failure(output: dict[str, Any], default: str) -> SwapFallback:
    return failure_from_error(output.get("error") or output.get("message"), default)


def _error_text(error: Any) -> str:
    if error is None:
        return ""
    if isinstance(error, dict):
        parts = [str(error[key]) for key in ("error_type", "error_message", "message", "error", "code")
                 if error.get(key)]
        return ": ".join(parts) if parts else str(error)
    return str(error)


def _from_text(text: str, max_bytes: int) -> InlineResult | UrlResult:
    stripped = text.strip()
    if _URL.match(stripped):
        return _as_url(stripped, "result")
    return InlineResult(decode_base64_image(stripped, max_bytes))


def _as_url(value: str, key: str) -> UrlResult:
    if not _URL.match(value):
        raise SwapFallback(PROTOCOL_ERROR, f"the output's {key} is not an http(s) URL")
    return UrlResult(value)


def decode_base64_image(text: str, max_bytes: int) -> bytes:
    """Decodes raw base64 or a ``data:<mime>;base64,`` URI (standard or URL-safe alphabet).

    Refuses, before decoding, anything that would decode to more than ``max_bytes``.
    """
    payload = text
    match = _DATA_URI.match(text)
    if match:
        if not match.group(1).lower().endswith(";base64"):
            raise SwapFallback(UNDECODABLE_RESULT, "the result is a data URI that is not base64")
        payload = text[match.end():]
    payload = "".join(payload.split())
    if not payload:
        raise SwapFallback(UNDECODABLE_RESULT, "the result is empty")
    if len(payload) // 4 * 3 > max_bytes:
        raise SwapFallback(UNDECODABLE_RESULT,
                           f"the result is about {len(payload) // 4 * 3:,} bytes; "
                           f"the limit is {max_bytes:,} bytes")
    payload = payload.translate(_URLSAFE).rstrip("=")
    payload += "=" * (-len(payload) % 4)
    try:
        return binascii.a2b_base64(payload, strict_mode=True)
    except (binascii.Error, ValueError):
        raise SwapFallback(UNDECODABLE_RESULT, "the result is not valid base64") from None


def validate_image(data: bytes, limits: ImageLimits) -> tuple[ImageInfo, Fingerprint]:
    """Checks that ``data`` is a whole JPEG/PNG/WebP within ``limits``; UNDECODABLE_RESULT if not.

    Returns what it is and its fingerprint (made from the same decoding, for the unchanged check).
    """
    try:
        info, image = decode_image(data, "the swap result", limits)
    except InvalidInput as exc:
        raise SwapFallback(UNDECODABLE_RESULT, str(exc)) from None
    with image:
        return info, fingerprint(image)
