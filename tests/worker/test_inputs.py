"""Input fetching and validation: URLs, data URIs, caps, timeouts, host policy, image checks."""

from __future__ import annotations

import base64
import io
import struct
import threading
import time
import zlib
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
from PIL import Image

from services.faceswap_worker import samples
from services.faceswap_worker.inputs import InputError, decode_image, fetch_bytes, host_allowed, load_image
from services.faceswap_worker.settings import WorkerSettings

pytestmark = pytest.mark.unit

PNG = samples.astronaut_png()
LOCAL = WorkerSettings(allow_private_urls=True, download_timeout_s=3.0)


class _Files(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    release = threading.Event()

    def log_message(self, format: str, *args: object) -> None:
        pass

    def _reply(self, status: int, body: bytes, headers: dict[str, str] | None = None) -> None:
        self.send_response(status)
        for k, v in (headers or {}).items():
            self.send_header(k, v)
        if "Content-Length" not in (headers or {}):
            self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def do_GET(self) -> None:
        if self.path == "/face.png":
            self._reply(200, PNG, {"Content-Type": "image/png"})
        elif self.path == "/moved":
            self._reply(302, b"", {"Location": "/face.png"})
        elif self.path == "/loop":
            self._reply(302, b"", {"Location": "/loop"})
        elif self.path == "/declared-huge":
            self._reply(200, b"x" * 10, {"Content-Length": str(10**9)})
        elif self.path == "/undeclared-huge":
            self.send_response(200)
            self.send_header("Connection", "close")
            self.end_headers()
            try:
                for _ in range(64):
                    self.wfile.write(b"\0" * 65536)
            except (BrokenPipeError, ConnectionResetError):
                pass
        elif self.path == "/stall":
            self.send_response(200)
            self.send_header("Content-Length", str(len(PNG)))
            self.end_headers()
            self.wfile.write(PNG[:100])
            self.wfile.flush()
            _Files.release.wait(10)
        else:
            self._reply(404, b"missing")


@pytest.fixture(scope="module")
def files() -> Iterator[str]:
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Files)
    server.daemon_threads = True
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    _Files.release.set()
    server.shutdown()
    server.server_close()


def _png_header(width: int, height: int) -> bytes:
    """A syntactically valid PNG that claims a size it does not have (a decompression-bomb header)."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    idat = zlib.compress(b"\0" * 4096)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", idat) + chunk(b"IEND", b"")


def test_data_uri_and_bare_base64_decode_to_the_same_image() -> None:
    encoded = base64.b64encode(PNG).decode()
    a = load_image(f"data:image/png;base64,{encoded}", "source_file", LOCAL)
    b = load_image(encoded, "source_file", LOCAL)
    assert a.shape == (512, 512, 3) and (a == b).all()


def test_http_download_follows_redirects(files: str) -> None:
    assert fetch_bytes(f"{files}/face.png", "target_file", LOCAL) == PNG
    assert fetch_bytes(f"{files}/moved", "target_file", LOCAL) == PNG
    with pytest.raises(InputError, match="more than 3 redirects"):
        fetch_bytes(f"{files}/loop", "target_file", LOCAL)


def test_download_failures_are_clear(files: str) -> None:
    with pytest.raises(InputError, match=r"download of target_file failed: HTTP 404"):
        fetch_bytes(f"{files}/nothing", "target_file", LOCAL)
    with pytest.raises(InputError, match="download of source_file failed: ConnectionError"):
        fetch_bytes("http://127.0.0.1:9/x.png", "source_file", LOCAL)


def test_size_caps_apply_to_declared_and_streamed_bodies(files: str) -> None:
    small = WorkerSettings(allow_private_urls=True, max_input_bytes=1_000_000)
    with pytest.raises(InputError, match="target_file is too large: 1000000000 bytes"):
        fetch_bytes(f"{files}/declared-huge", "target_file", small)
    with pytest.raises(InputError, match="target_file is too large: over the limit"):
        fetch_bytes(f"{files}/undeclared-huge", "target_file", small)
    with pytest.raises(InputError, match="source_file is too large"):
        fetch_bytes("data:image/png;base64," + "A" * 2_000_000, "source_file", small)


def test_stalled_download_times_out(files: str) -> None:
    quick = WorkerSettings(allow_private_urls=True, download_timeout_s=0.5, connect_timeout_s=0.5)
    started = time.monotonic()
    with pytest.raises(InputError, match="download of target_file failed"):
        fetch_bytes(f"{files}/stall", "target_file", quick)
    assert time.monotonic() - started < 3


def test_private_hosts_are_refused_unless_allowed(files: str) -> None:
    with pytest.raises(InputError, match=r"host '127\.0\.0\.1' is not allowed"):
        fetch_bytes(f"{files}/face.png", "source_file", WorkerSettings())
    listed = WorkerSettings(allowed_hosts=("127.0.0.1",))
    assert fetch_bytes(f"{files}/face.png", "source_file", listed) == PNG
    assert not host_allowed("example.org", listed)
    assert host_allowed("img.example.org", WorkerSettings(allowed_hosts=("*.example.org",), allow_private_urls=True))
    with pytest.raises(InputError, match="only http"):
        fetch_bytes("file:///etc/passwd", "source_file", LOCAL)


def test_images_are_validated_before_decoding() -> None:
    with pytest.raises(InputError, match="source_file is not an image"):
        decode_image(b"%PDF-1.4 not an image at all", "source_file", LOCAL)
    with pytest.raises(InputError, match="truncated or corrupt"):
        decode_image(PNG[: len(PNG) // 2], "source_file", LOCAL)
    with pytest.raises(InputError, match="too large: 60000x60000 pixels"):
        decode_image(_png_header(60000, 60000), "target_file", LOCAL)
    with pytest.raises(InputError, match="too large: 8000x8000 pixels"):
        decode_image(_png_header(8000, 8000), "target_file", WorkerSettings(max_pixels=50_000_000, max_side=4096))
    with pytest.raises(InputError, match="too small"):
        buf = io.BytesIO()
        Image.new("RGB", (8, 8)).save(buf, "PNG")
        decode_image(buf.getvalue(), "target_file", LOCAL)


def test_the_limits_come_from_the_shared_table_and_hold_at_their_edges() -> None:
    from services.common.image_limits import STORED_IMAGE

    defaults = WorkerSettings()
    assert (defaults.max_input_bytes, defaults.max_pixels, defaults.max_side, defaults.min_side) == (
        STORED_IMAGE.max_bytes, STORED_IMAGE.max_pixels, STORED_IMAGE.max_side, STORED_IMAGE.min_side)
    settings = WorkerSettings.from_env({})
    assert (settings.max_input_bytes, settings.max_pixels, settings.max_side, settings.min_side) == (
        STORED_IMAGE.max_bytes, STORED_IMAGE.max_pixels, STORED_IMAGE.max_side, STORED_IMAGE.min_side)
    edge, side = STORED_IMAGE.min_side, STORED_IMAGE.max_side
    for width, height in ((edge, edge), (side, edge)):
        buf = io.BytesIO()
        Image.new("RGB", (width, height)).save(buf, "PNG")
        assert decode_image(buf.getvalue(), "target_file", LOCAL).shape == (height, width, 3)
    with pytest.raises(InputError, match=f"too small: {edge - 1}x{edge} pixels"):
        buf = io.BytesIO()
        Image.new("RGB", (edge - 1, edge)).save(buf, "PNG")
        decode_image(buf.getvalue(), "target_file", LOCAL)
    with pytest.raises(InputError, match=f"too large: {side + 1}x{edge} pixels"):
        decode_image(_png_header(side + 1, edge), "target_file", LOCAL)


def test_a_multi_picture_jpeg_decodes_to_its_primary_picture() -> None:
    from tests.unit.gateway.sample_images import PRIMARY_RGB, multi_picture_jpeg

    rgb = decode_image(multi_picture_jpeg(), "source_file", LOCAL)
    assert rgb.shape == (48, 64, 3)
    assert abs(rgb.reshape(-1, 3).mean(axis=0) - PRIMARY_RGB).max() < 12


def test_exif_orientation_is_applied() -> None:
    img = Image.new("RGB", (64, 32), (200, 10, 10))
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90° clockwise for display
    buf = io.BytesIO()
    img.save(buf, "JPEG", exif=exif.tobytes())
    assert decode_image(buf.getvalue(), "target_file", LOCAL).shape == (64, 32, 3)


def test_settings_from_env_reject_bad_values() -> None:
    s = WorkerSettings.from_env({"FACESWAP_ALLOWED_HOSTS": "a.com, *.b.com", "FACESWAP_RESULT_DATA_URI": "true"})
    assert s.allowed_hosts == ("a.com", "*.b.com") and s.result_data_uri
    with pytest.raises(ValueError, match="FACESWAP_JPEG_QUALITY"):
        WorkerSettings.from_env({"FACESWAP_JPEG_QUALITY": "500"})
    with pytest.raises(ValueError, match="FACESWAP_ALLOW_PRIVATE_URLS"):
        WorkerSettings.from_env({"FACESWAP_ALLOW_PRIVATE_URLS": "maybe"})
