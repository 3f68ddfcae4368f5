"""Checks of what callers send: images, job ids and indexes, keys they hand back."""

from __future__ import annotations

import io
import re
from dataclasses import dataclass

from PIL import Image

from facegen.v1 import swapper_pb2
from services.common.errors import InvalidInput
from services.common.image_limits import ImageLimits
from services.common.images import ImageInfo, decode_image, sanitize
from services.swapper.keys import is_reference_key, is_temp_key_of
from services.swapper.unchanged import Fingerprint, fingerprint

_JOB_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")
_MAX_INDEX = 1000
# Image metadata that may carry personal data (EXIF GPS, XMP, comments, PNG text).
_PERSONAL_METADATA = ("exif", "xmp", "XML:com.adobe.xmp", "comment")


@dataclass(frozen=True)
class CheckedImage:
    """Validated image bytes (metadata stripped when there was any) and what they are."""

    data: bytes
    info: ImageInfo
    # What a swap result is compared with (``services/swapper/unchanged.py``), when asked for.
    fingerprint: Fingerprint | None = None


def check_image(data: bytes, field: str, limits: ImageLimits, with_fingerprint: bool = False) -> CheckedImage:
    """Validates an image; re-encodes it only when it carries metadata or more than one picture.

    ``with_fingerprint``: also reduce the picture to its fingerprint, from the decoding the check does anyway.
    """
    info, image = decode_image(data, field, limits)
    with image:
        text = getattr(image, "text", None)
        has_metadata = any(key in image.info for key in _PERSONAL_METADATA) or bool(text)
        if not (has_metadata or info.multi_picture):
            return CheckedImage(data, info, fingerprint(image) if with_fingerprint else None)
    clean, info = sanitize(data, field, limits)
    if not with_fingerprint:
        return CheckedImage(clean, info)
    with Image.open(io.BytesIO(clean)) as cleaned:
        return CheckedImage(clean, info, fingerprint(cleaned))


def check_job(job_id: str, image_index: int) -> None:
    """INVALID_ARGUMENT unless ``job_id`` and ``image_index`` are well formed."""
    if not _JOB_ID.match(job_id):
        raise InvalidInput("job_id must be 1-128 characters: letters, digits, '.', '_' or '-', "
                           "starting with a letter or digit")
    if image_index < 0 or image_index > _MAX_INDEX:
        raise InvalidInput(f"image_index is {image_index}; it must be between 0 and {_MAX_INDEX}")


def check_reference_key(key: str) -> None:
    """INVALID_ARGUMENT unless ``key`` has the form PutReference hands out."""
    if not is_reference_key(key):
        raise InvalidInput("reference_key must be a key returned by PutReference (refs/<sha256>.<jpg|png|webp>)")


def check_swap_request(request: swapper_pb2.SwapRequest) -> None:
    """INVALID_ARGUMENT for any malformed field of a SwapRequest (the image itself is checked later)."""
    check_job(request.job_id, request.image_index)
    if request.deadline_ms < 0:
        raise InvalidInput(f"deadline_ms is {request.deadline_ms}; it must be 0 (the default) or positive")
    if request.reference_key:
        check_reference_key(request.reference_key)
    if request.target_key:
        if request.target_image:
            raise InvalidInput("give target_image or target_key, not both")
        if not is_temp_key_of(request.target_key, request.job_id, request.image_index):
            raise InvalidInput("target_key must be the key of an earlier SwapStored event (or PutTarget) of the "
                               "same job_id and image_index (tmp/<job_id>/<index>-<nonce>-target.<ext>)")
