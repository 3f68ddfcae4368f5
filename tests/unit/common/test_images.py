"""Validation and sanitising of untrusted image bytes."""

import io

import pytest
from PIL import Image

from services.common.errors import InvalidInput
from services.common.images import ImageLimits, inspect_image, sanitize, sniff_mime
from tests.unit.gateway import sample_images as images

pytestmark = pytest.mark.unit


def _encode(image: Image.Image, fmt: str, **kwargs) -> bytes:
    out = io.BytesIO()
    image.save(out, fmt, **kwargs)
    return out.getvalue()


def _photo(width: int = 40, height: int = 20) -> Image.Image:
    image = Image.new("RGB", (width, height), (200, 30, 30))
    image.paste((30, 30, 200), (0, 0, width // 2, height))  # left half blue: orientation is visible
    return image


@pytest.mark.parametrize(("fmt", "mime"), [("PNG", "image/png"), ("JPEG", "image/jpeg"), ("WEBP", "image/webp")])
def test_accepts_the_three_formats(fmt: str, mime: str) -> None:
    data = _encode(_photo(), fmt)
    info = inspect_image(data, "reference_image")
    assert (info.mime, info.width, info.height) == (mime, 40, 20)
    assert sniff_mime(data) == mime


def test_rejects_non_images_naming_the_field() -> None:
    with pytest.raises(InvalidInput, match="reference_image is not a JPEG, PNG or WebP image"):
        inspect_image(b"%PDF-1.7 not an image", "reference_image")
    with pytest.raises(InvalidInput, match="target_image is empty"):
        inspect_image(b"", "target_image")
    gif = _encode(_photo(), "GIF")
    with pytest.raises(InvalidInput, match="not a JPEG, PNG or WebP"):
        inspect_image(gif, "reference_image")


def test_rejects_truncated_files() -> None:
    data = _encode(_photo(256, 256), "PNG", compress_level=0)
    with pytest.raises(InvalidInput, match="truncated or corrupt"):
        inspect_image(data[: len(data) // 2], "reference_image")


def test_rejects_decompression_bombs_before_decoding() -> None:
    bomb = _encode(Image.new("1", (10_000, 10_000)), "PNG")  # 100 MP in a few kB
    assert len(bomb) < 100_000
    with pytest.raises(InvalidInput, match="the limit is 40,000,000 pixels"):
        inspect_image(bomb, "reference_image")


def test_rejects_files_over_the_byte_limit() -> None:
    data = _encode(_photo(), "PNG")
    with pytest.raises(InvalidInput, match="the limit is 100 bytes"):
        inspect_image(data, "reference_image", ImageLimits(max_bytes=100))


def test_sanitize_applies_orientation_and_strips_metadata() -> None:
    exif = Image.Exif()
    exif[0x0112] = 6  # orientation: rotate 90° clockwise to display
    exif[0x010F] = "SecretCam"  # camera make
    exif.get_ifd(0x8825)[2] = (51.0, 30.0, 0.0)  # GPS latitude
    data = _encode(_photo(40, 20), "JPEG", exif=exif.tobytes(), quality=95)
    assert b"SecretCam" in data

    clean, info = sanitize(data, "reference_image")

    assert b"SecretCam" not in clean
    with Image.open(io.BytesIO(clean)) as image:
        assert image.size == (20, 40)  # rotated upright
        assert not image.getexif()
        assert info.width == 20 and info.height == 40
        # After a 90° clockwise turn the blue left half is on top.
        top, bottom = image.getpixel((10, 5)), image.getpixel((10, 35))
        assert top[2] > top[0] and bottom[0] > bottom[2]


def test_sanitize_drops_png_text_and_icc_profile() -> None:
    from PIL import ImageCms, PngImagePlugin

    text = PngImagePlugin.PngInfo()
    text.add_text("Author", "Jane Secret")
    icc = ImageCms.ImageCmsProfile(ImageCms.createProfile("sRGB")).tobytes()
    data = _encode(_photo(), "PNG", pnginfo=text, icc_profile=icc)
    clean, _ = sanitize(data, "reference_image")
    assert b"Jane Secret" not in clean
    with Image.open(io.BytesIO(clean)) as image:
        assert "icc_profile" not in image.info and not image.text


def test_a_multi_picture_jpeg_is_a_jpeg_and_sanitising_keeps_only_its_primary_picture() -> None:
    data = images.multi_picture_jpeg()
    info = inspect_image(data, "reference_image")
    assert (info.format, info.mime, info.width, info.height) == ("JPEG", "image/jpeg", 64, 48)
    assert info.multi_picture
    assert not inspect_image(_encode(_photo(), "JPEG"), "reference_image").multi_picture
    clean, clean_info = sanitize(data, "reference_image")
    assert (clean_info.format, clean_info.mime) == ("JPEG", "image/jpeg") and not clean_info.multi_picture
    images.assert_plain_jpeg_of_the_primary_picture(clean)
