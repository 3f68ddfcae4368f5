"""Reading workers' outputs: every success and failure variant, and image checks on the result."""

from __future__ import annotations

import base64
import io
import struct
import zlib

import pytest
from PIL import Image

from services.common.images import ImageLimits
from services.swapper.fallback import (
    NO_FACE_FOUND,
    PROTOCOL_ERROR,
    REMOTE_FAILED,
    UNDECODABLE_RESULT,
    SwapFallback,
)
from services.swapper.results import (
    InlineResult,
    UrlResult,
    decode_base64_image,
    failure_from_error,
    interpret_output,
    validate_image,
)

pytestmark = pytest.mark.unit

MAX = 10 * 1024 * 1024


def image_bytes(fmt: str = "PNG", size: tuple[int, int] = (24, 16)) -> bytes:
    out = io.BytesIO()
    Image.new("RGB", size, (10, 120, 200)).save(out, fmt)
    return out.getvalue()


PNG = image_bytes()
JPEG = image_bytes("JPEG")


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def reason_of(output: object) -> int:
    with pytest.raises(SwapFallback) as caught:
        interpret_output(output, MAX)
    return caught.value.reason


def test_raw_base64_result_decodes_to_the_image() -> None:
    assert interpret_output({"result": b64(PNG)}, MAX) == InlineResult(PNG)


@pytest.mark.parametrize("prefix", ["data:image/jpeg;base64,", "data:image/png;base64,",
                                    "DATA:image/jpeg;BASE64,", "data:;base64,"])
def test_data_uri_result_decodes_whatever_the_declared_type(prefix: str) -> None:
    assert interpret_output({"result": prefix + b64(JPEG)}, MAX) == InlineResult(JPEG)


def test_base64_with_line_breaks_and_missing_padding_decodes() -> None:
    text = b64(PNG).rstrip("=")
    wrapped = "\n".join(text[i:i + 76] for i in range(0, len(text), 76))
    assert interpret_output({"result": wrapped}, MAX) == InlineResult(PNG)


def test_urlsafe_base64_decodes() -> None:
    assert interpret_output({"result": base64.urlsafe_b64encode(PNG).decode()}, MAX) == InlineResult(PNG)


def test_bare_string_output_is_the_result() -> None:
    assert interpret_output(b64(PNG), MAX) == InlineResult(PNG)


@pytest.mark.parametrize("key", ["result_url", "url"])
def test_url_results_are_returned_for_download(key: str) -> None:
    assert interpret_output({key: "https://cdn.example/x.png"}, MAX) == UrlResult("https://cdn.example/x.png")


def test_result_holding_a_url_is_downloaded() -> None:
    assert interpret_output({"result": "http://127.0.0.1:9/r.jpg"}, MAX) == UrlResult("http://127.0.0.1:9/r.jpg")


def test_non_http_url_is_a_protocol_error() -> None:
    assert reason_of({"result_url": "file:///etc/passwd"}) == PROTOCOL_ERROR


def test_success_false_is_a_remote_failure_with_the_error() -> None:
    with pytest.raises(SwapFallback) as caught:
        interpret_output({"success": False, "error": "CUDA out of memory"}, MAX)
    assert caught.value.reason == REMOTE_FAILED
    assert "CUDA out of memory" in caught.value.message


@pytest.mark.parametrize("error", ["No face detected in source image", "no faces found in target",
                                   "Face not found", "Could not detect a face", "ERROR: NO_FACE"])
def test_success_false_saying_no_face_is_no_face_found(error: str) -> None:
    assert reason_of({"success": False, "error": error}) == NO_FACE_FOUND


def test_success_false_wins_over_a_result() -> None:
    assert reason_of({"success": False, "result": b64(PNG), "error": "bad"}) == REMOTE_FAILED


def test_error_without_result_is_a_remote_failure() -> None:
    assert reason_of({"error": "worker crashed"}) == REMOTE_FAILED


def test_missing_output_is_a_protocol_error() -> None:
    assert reason_of(None) == PROTOCOL_ERROR


@pytest.mark.parametrize("output", [{"status": "ok"}, {}, {"result": ""}, {"result": 42}])
def test_output_without_any_result_is_a_protocol_error(output: object) -> None:
    assert reason_of(output) == PROTOCOL_ERROR


@pytest.mark.parametrize("output", [[b64(PNG)], 3.5])
def test_output_of_the_wrong_type_is_a_protocol_error(output: object) -> None:
    assert reason_of(output) == PROTOCOL_ERROR


@pytest.mark.parametrize("text", ["not base64 at all!!", "QUJD=RA==", "A"])
def test_invalid_base64_is_undecodable(text: str) -> None:
    assert reason_of({"result": text}) == UNDECODABLE_RESULT


def test_data_uri_that_is_not_base64_is_undecodable() -> None:
    assert reason_of({"result": "data:image/png,%89PNG"}) == UNDECODABLE_RESULT


def test_result_over_the_size_limit_is_refused_before_decoding() -> None:
    with pytest.raises(SwapFallback) as caught:
        decode_base64_image("A" * 4000, max_bytes=1000)
    assert caught.value.reason == UNDECODABLE_RESULT
    assert "limit" in caught.value.message


def test_failed_job_error_objects_are_read() -> None:
    fallback = failure_from_error({"error_type": "ValueError", "error_message": "no face in target"}, "x")
    assert fallback.reason == NO_FACE_FOUND
    assert "ValueError" in fallback.message


def test_failed_job_without_error_uses_the_default_message() -> None:
    fallback = failure_from_error(None, "the remote job FAILED without an error message")
    assert fallback.reason == REMOTE_FAILED
    assert "without an error message" in fallback.message


def test_valid_images_pass_validation_with_their_fingerprint() -> None:
    info, fingerprint = validate_image(PNG, ImageLimits())
    assert (info.mime, info.width, info.height) == ("image/png", 24, 16)
    assert (fingerprint.width, fingerprint.height, fingerprint.image.size) == (24, 16, (6, 4))
    assert validate_image(JPEG, ImageLimits())[0].mime == "image/jpeg"


def test_bytes_that_are_not_an_image_are_undecodable() -> None:
    with pytest.raises(SwapFallback) as caught:
        validate_image(b"GIF89a" + b"\0" * 100, ImageLimits())
    assert caught.value.reason == UNDECODABLE_RESULT


def test_truncated_image_is_undecodable() -> None:
    with pytest.raises(SwapFallback) as caught:
        validate_image(JPEG[: len(JPEG) // 2], ImageLimits())
    assert caught.value.reason == UNDECODABLE_RESULT


def test_image_over_the_side_limit_is_undecodable() -> None:
    with pytest.raises(SwapFallback) as caught:
        validate_image(image_bytes(size=(300, 10)), ImageLimits(max_side=256))
    assert caught.value.reason == UNDECODABLE_RESULT
    assert "300x10" in caught.value.message


def _bomb_png(width: int, height: int) -> bytes:
    """A tiny PNG whose header claims ``width`` x ``height`` pixels."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    header = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(b"\0" * 64)) + \
        chunk(b"IEND", b"")


def test_decompression_bomb_is_refused_from_its_header() -> None:
    with pytest.raises(SwapFallback) as caught:
        validate_image(_bomb_png(11_000, 11_000), ImageLimits(max_pixels=40_000_000, max_side=12_000))
    assert caught.value.reason == UNDECODABLE_RESULT
    assert "pixels" in caught.value.message
