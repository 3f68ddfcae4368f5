"""Checking untrusted image bytes before anything else touches them.

Every image that enters the system (reference faces, target photos, results
returned by a face-swap worker) goes through ``inspect_image`` (or
``decode_image``, which hands over the decoded picture as well): the format is
one we accept, the byte size, side lengths and pixel count are within limits
(``services/common/image_limits.py``, the one table of the whole system)
(checked from the header, before decoding, so a decompression bomb is refused
without allocating it), and the whole image decodes (so a truncated file is
refused). ``sanitize`` then applies the EXIF orientation and re-encodes the
pixels alone, which drops EXIF/GPS and every other piece of metadata.
"""

from __future__ import annotations

import io
import warnings
from dataclasses import dataclass

from PIL import Image, ImageOps

from services.common.errors import InvalidInput
from services.common.image_limits import CALLER_PHOTO, ImageLimits

MIME_BY_FORMAT = {"JPEG": "image/jpeg", "PNG": "image/png", "WEBP": "image/webp"}
# A multi-picture JPEG (MPO, written by many phones and cameras) is a JPEG whose primary
# picture comes first; what follows it (another view, a preview) is dropped by ``sanitize``.
_FORMAT_ALIASES = {"MPO": "JPEG"}
EXTENSION_BY_MIME = {"image/jpeg": "jpg", "image/png": "png", "image/webp": "webp"}

__all__ = ["EXTENSION_BY_MIME", "MIME_BY_FORMAT", "ImageInfo", "ImageLimits", "decode_image", "inspect_image",
           "sanitize", "sniff_mime"]


@dataclass(frozen=True)
class ImageInfo:
    """What ``inspect_image`` learned about valid image bytes."""

    format: str
    mime: str
    width: int
    height: int
    # An MPO: more pictures follow the primary one; ``sanitize`` keeps the primary alone.
    multi_picture: bool = False


def sniff_mime(data: bytes) -> str | None:
    """The MIME type the magic bytes say, for the formats we accept; None otherwise."""
    if data.startswith(b"\xff\xd8\xff"):
        return "image/jpeg"
    if data.startswith(b"\x89PNG\r\n\x1a\n"):
        return "image/png"
    if len(data) >= 12 and data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return "image/webp"
    return None


def inspect_image(data: bytes, field: str, limits: ImageLimits = CALLER_PHOTO) -> ImageInfo:
    """Validates ``data`` as a complete JPEG/PNG/WebP within ``limits``.

    Raises InvalidInput naming ``field`` and the rule that was broken.
    """
    info, image = decode_image(data, field, limits)
    image.close()
    return info


def decode_image(data: bytes, field: str, limits: ImageLimits = CALLER_PHOTO) -> tuple[ImageInfo, Image.Image]:
    """``inspect_image``'s checks, handing over the decoded picture too (for callers that look at the pixels
    without decoding them a second time; the caller closes it)."""
    if not data:
        raise InvalidInput(f"{field} is empty")
    if len(data) > limits.max_bytes:
        raise InvalidInput(
            f"{field} is {len(data):,} bytes; the limit is {limits.max_bytes:,} bytes")
    if sniff_mime(data) is None:
        raise InvalidInput(f"{field} is not a JPEG, PNG or WebP image")
    image: Image.Image | None = None
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            image = Image.open(io.BytesIO(data))
            fmt = _FORMAT_ALIASES.get(image.format or "", image.format or "")
            multi_picture = image.format in _FORMAT_ALIASES
            width, height = image.size
            _check_dimensions(field, width, height, limits)
            image.load()
            if fmt not in MIME_BY_FORMAT:
                raise InvalidInput(f"{field} is {fmt or 'an unknown format'}; allowed: JPEG, PNG, WebP")
    except InvalidInput:
        _close(image)
        raise
    except (Image.DecompressionBombError, Image.DecompressionBombWarning):
        _close(image)
        raise InvalidInput(
            f"{field} decompresses to too many pixels; the limit is "
            f"{limits.max_pixels:,} pixels") from None
    except (OSError, ValueError, SyntaxError, Image.UnidentifiedImageError):
        _close(image)
        raise InvalidInput(f"{field} is truncated or corrupt and cannot be decoded") from None
    info = ImageInfo(format=fmt, mime=MIME_BY_FORMAT[fmt], width=width, height=height, multi_picture=multi_picture)
    return info, image


def _close(image: Image.Image | None) -> None:
    if image is not None:
        image.close()


def _check_dimensions(field: str, width: int, height: int, limits: ImageLimits) -> None:
    if width <= 0 or height <= 0:
        raise InvalidInput(f"{field} has no pixels")
    if width < limits.min_side or height < limits.min_side:
        raise InvalidInput(
            f"{field} is {width}x{height}; each side must be at least {limits.min_side}")
    if width > limits.max_side or height > limits.max_side:
        raise InvalidInput(
            f"{field} is {width}x{height}; each side must be at most {limits.max_side}")
    if width * height > limits.max_pixels:
        raise InvalidInput(
            f"{field} is {width}x{height} = {width * height:,} pixels; "
            f"the limit is {limits.max_pixels:,} pixels")


def sanitize(data: bytes, field: str, limits: ImageLimits = CALLER_PHOTO) -> tuple[bytes, ImageInfo]:
    """Validates ``data``, applies its EXIF orientation and re-encodes it without metadata.

    The format is kept (JPEG and WebP at quality 95, PNG lossless); a multi-picture
    JPEG becomes a plain JPEG of its primary picture.
    Returns the clean bytes and their info.
    """
    info = inspect_image(data, field, limits)
    with Image.open(io.BytesIO(data)) as opened:
        image = ImageOps.exif_transpose(opened)
        if image.mode not in ("RGB", "RGBA", "L"):
            image = image.convert("RGBA" if "A" in image.getbands() else "RGB")
        # Encoders copy what ``info`` carries (EXIF, ICC profile, XMP, text chunks).
        image.info.clear()
        out = io.BytesIO()
        if info.format == "JPEG":
            image.convert("RGB").save(out, "JPEG", quality=95)
        elif info.format == "PNG":
            image.save(out, "PNG")
        else:
            # Lossless would blow a lossy WebP photo up several times over.
            image.save(out, "WEBP", quality=95)
    clean = out.getvalue()
    return clean, ImageInfo(info.format, info.mime, image.width, image.height)
