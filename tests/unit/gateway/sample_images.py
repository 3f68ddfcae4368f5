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


PRIMARY_RGB = (200, 30, 30)


def multi_picture_jpeg(width: int = 64, height: int = 48) -> bytes:
    """An MPO (what many phones write): a red primary JPEG followed by a green second picture."""
    out = io.BytesIO()
    Image.new("RGB", (width, height), PRIMARY_RGB).save(
        out, "MPO", save_all=True, append_images=[Image.new("RGB", (width, height), (30, 200, 30))])
    data = out.getvalue()
    with Image.open(io.BytesIO(data)) as check:
        assert check.format == "MPO" and check.n_frames == 2
    return data


def assert_plain_jpeg_of_the_primary_picture(data: bytes) -> None:
    """``data`` is a single-picture JPEG whose pixels are the MPO's primary picture."""
    with Image.open(io.BytesIO(data)) as image:
        assert image.format == "JPEG" and getattr(image, "n_frames", 1) == 1
        assert "mp" not in image.info
        red, green, blue = image.convert("RGB").getpixel((image.width // 2, image.height // 2))
    assert abs(red - PRIMARY_RGB[0]) < 12 and abs(green - PRIMARY_RGB[1]) < 12 and abs(blue - PRIMARY_RGB[2]) < 12
