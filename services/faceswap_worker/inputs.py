"""Fetching and validating input images: http(s) URLs or base64 data URIs, capped and checked
before anything is decoded."""

from __future__ import annotations

import base64
import binascii
import io
import ipaddress
import re
import socket
import time
from typing import Any
from urllib.parse import urljoin, urlsplit

import numpy as np
import requests
from PIL import Image, ImageOps

from services.faceswap_worker.settings import WorkerSettings

_DATA_URI = re.compile(r"^data:([\w.+-]+/[\w.+-]+)?((?:;[\w-]+=[\w.-]+)*)(;base64)?,", re.IGNORECASE)
_BASE64_CHARS = re.compile(r"^[A-Za-z0-9+/=_\-\s]+$")
# Magic numbers of the formats accepted, checked before the decoder sees the bytes.
_SIGNATURES = (
    (b"\xff\xd8\xff", "JPEG"),
    (b"\x89PNG\r\n\x1a\n", "PNG"),
    (b"BM", "BMP"),
)


# Our own limits (max_side, max_pixels) are checked from the header before anything is decoded;
# Pillow's global bomb check would otherwise refuse huge headers without saying their size.
Image.MAX_IMAGE_PIXELS = None


class InputError(ValueError):
    """A problem with the request's input; the message is returned to the caller as the job error."""


def _sniff(data: bytes) -> str | None:
    if len(data) >= 12 and data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return "WEBP"
    for magic, fmt in _SIGNATURES:
        if data.startswith(magic):
            return fmt
    return None


def host_allowed(host: str, settings: WorkerSettings) -> bool:
    """Whether a URL host may be fetched: on the allow-list if there is one, and public unless private is allowed.

    A host listed explicitly is trusted even when it resolves to a private or loopback address.
    """
    host = host.lower().strip("[]")
    if settings.allowed_hosts:
        listed = any(host == h or (h.startswith("*.") and host.endswith(h[1:])) for h in settings.allowed_hosts)
        if not listed:
            return False
        if host in settings.allowed_hosts:
            return True
    if settings.allow_private_urls:
        return True
    try:
        infos = socket.getaddrinfo(host, None)
    except OSError:
        return True  # the download reports the resolution failure with its own message
    return all(ipaddress.ip_address(str(info[4][0]).split("%")[0]).is_global for info in infos)


def _download(url: str, field: str, settings: WorkerSettings) -> bytes:
    deadline = time.monotonic() + settings.download_timeout_s
    for _ in range(settings.max_redirects + 1):
        parts = urlsplit(url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise InputError(f"{field}: only http(s) URLs and data URIs are accepted")
        if not host_allowed(parts.hostname, settings):
            raise InputError(f"{field}: host {parts.hostname!r} is not allowed")
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise InputError(f"download of {field} failed: timed out after {settings.download_timeout_s:g} s")
        try:
            resp = requests.get(
                url,
                stream=True,
                allow_redirects=False,
                timeout=(min(settings.connect_timeout_s, remaining), remaining),
                headers={"Accept": "image/*"},
            )
        except requests.RequestException as exc:
            raise InputError(f"download of {field} failed: {type(exc).__name__}") from exc
        with resp:
            if resp.is_redirect and "location" in resp.headers:
                url = urljoin(url, resp.headers["location"])
                continue
            if resp.status_code != 200:
                raise InputError(f"download of {field} failed: HTTP {resp.status_code}")
            declared = resp.headers.get("content-length")
            if declared and declared.isdigit() and int(declared) > settings.max_input_bytes:
                raise InputError(f"{field} is too large: {int(declared)} bytes > limit {settings.max_input_bytes}")
            chunks: list[bytes] = []
            size = 0
            try:
                for chunk in resp.iter_content(chunk_size=65536):
                    size += len(chunk)
                    if size > settings.max_input_bytes:
                        raise InputError(f"{field} is too large: over the limit of {settings.max_input_bytes} bytes")
                    if time.monotonic() > deadline:
                        raise InputError(
                            f"download of {field} failed: timed out after {settings.download_timeout_s:g} s"
                        )
                    chunks.append(chunk)
            except requests.RequestException as exc:
                raise InputError(f"download of {field} failed: {type(exc).__name__}") from exc
            return b"".join(chunks)
    raise InputError(f"download of {field} failed: more than {settings.max_redirects} redirects")


def _decode_base64(text: str, field: str, settings: WorkerSettings) -> bytes:
    # 4 base64 characters carry 3 bytes: refuse oversized payloads before decoding them.
    if len(text) * 3 // 4 > settings.max_input_bytes + 3:
        raise InputError(f"{field} is too large: over the limit of {settings.max_input_bytes} bytes")
    compact = re.sub(r"\s+", "", text)
    try:
        if "-" in compact or "_" in compact:
            return base64.urlsafe_b64decode(compact + "=" * (-len(compact) % 4))
        return base64.b64decode(compact + "=" * (-len(compact) % 4), validate=True)
    except (binascii.Error, ValueError) as exc:
        raise InputError(f"{field}: invalid base64 data") from exc


def fetch_bytes(value: Any, field: str, settings: WorkerSettings) -> bytes:
    """The raw bytes behind an input value: an http(s) URL, a data URI, or bare base64."""
    if not isinstance(value, str) or not value.strip():
        raise InputError(f"{field} is required (an http(s) URL or a base64 data URI)")
    value = value.strip()
    lowered = value[:16].lower()
    if lowered.startswith(("http://", "https://")):
        return _download(value, field, settings)
    match = _DATA_URI.match(value)
    if match:
        if not match.group(3):
            raise InputError(f"{field}: data URI must be base64-encoded")
        return _decode_base64(value[match.end():], field, settings)
    if "://" in value[:16]:
        raise InputError(f"{field}: only http(s) URLs and data URIs are accepted")
    if _BASE64_CHARS.match(value[:4096]):
        return _decode_base64(value, field, settings)
    raise InputError(f"{field} is not a URL, a data URI or base64 data")


def image_size(data: bytes, field: str, settings: WorkerSettings) -> tuple[int, int, str]:
    """(width, height, format) read from the header, after the byte, format and size checks; nothing decoded."""
    if len(data) > settings.max_input_bytes:
        raise InputError(f"{field} is too large: {len(data)} bytes > limit {settings.max_input_bytes}")
    fmt = _sniff(data)
    if fmt is None:
        raise InputError(f"{field} is not an image (accepted: JPEG, PNG, WebP, BMP)")
    try:
        with Image.open(io.BytesIO(data), formats=[fmt]) as img:
            width, height = img.size
    except Exception as exc:
        raise InputError(f"{field} is not a valid {fmt} image") from exc
    if width < settings.min_side or height < settings.min_side:
        raise InputError(
            f"{field} is too small: {width}x{height} pixels (minimum {settings.min_side}x{settings.min_side})")
    if width > settings.max_side or height > settings.max_side or width * height > settings.max_pixels:
        raise InputError(
            f"{field} is too large: {width}x{height} pixels (limit {settings.max_side} per side, "
            f"{settings.max_pixels} pixels)"
        )
    return width, height, fmt


def decode_image(data: bytes, field: str, settings: WorkerSettings) -> np.ndarray:
    """Validate (format, size, pixel count) and only then decode to an RGB uint8 array, EXIF orientation applied."""
    _, _, fmt = image_size(data, field, settings)
    try:
        img = Image.open(io.BytesIO(data), formats=[fmt])
        img.load()
        rgb = ImageOps.exif_transpose(img).convert("RGB")
    except Exception as exc:
        raise InputError(f"{field} is not a valid {fmt} image (truncated or corrupt)") from exc
    return np.asarray(rgb, dtype=np.uint8).copy()


def load_image(value: Any, field: str, settings: WorkerSettings) -> np.ndarray:
    """Fetch and decode one input image."""
    return decode_image(fetch_bytes(value, field, settings), field, settings)


def encode_jpeg(rgb: np.ndarray, quality: int) -> bytes:
    """JPEG bytes of an RGB uint8 image."""
    buf = io.BytesIO()
    Image.fromarray(rgb).save(buf, format="JPEG", quality=quality)
    return buf.getvalue()
