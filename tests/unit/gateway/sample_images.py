"""Test images built in memory: EXIF-tagged JPEGs, bombs, truncated files."""

from __future__ import annotations

import io

from PIL import Image


def jpeg_with_exif(width: int = 80, height: int = 40, orientation: int = 6) -> bytes:
    """A JPEG whose EXIF carries an orientation, a camera model and GPS coordinates."""
    image = Image.new("RGB", (width, height), (200, 30, 30))
    exif = Image.Exif()
    exif[0x0112] = orientation  # Orientation: 6 = rotate 90° clockwise to display
    exif[0x0110] = "SecretCam 3000"  # Model
    exif[0x8825] = {1: "N", 2: (48.0, 51.0, 29.0), 3: "E", 4: (2.0, 17.0, 40.0)}  # GPS IFD
    out = io.BytesIO()
    image.save(out, "JPEG", exif=exif)
    return out.getvalue()


def png(width: int = 64, height: int = 64) -> bytes:
    """A small valid PNG."""
    out = io.BytesIO()
    Image.new("RGB", (width, height), (10, 120, 200)).save(out, "PNG")
    return out.getvalue()


def bomb_png(side: int = 7000) -> bytes:
    """A tiny file that decodes to side² pixels (49 MP at the default: over the 40 MP limit)."""
    out = io.BytesIO()
    Image.new("1", (side, side), 0).save(out, "PNG", optimize=True)
    return out.getvalue()


def gif() -> bytes:
    """A valid image in a format the gateway does not accept."""
    out = io.BytesIO()
    Image.new("RGB", (16, 16)).save(out, "GIF")
    return out.getvalue()
