"""Worker settings, read once from the environment (see docs/faceswap_worker.md for the table)."""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass

# The system's one image-limit table; standard library only, so it imports here (see its docstring).
from services.common.image_limits import STORED_IMAGE


def _bool(env: Mapping[str, str], name: str, default: bool) -> bool:
    raw = env.get(name, "").strip().lower()
    if not raw:
        return default
    if raw in ("1", "true", "yes", "on"):
        return True
    if raw in ("0", "false", "no", "off"):
        return False
    raise ValueError(f"{name} must be true or false, got {raw!r}")


def _num(env: Mapping[str, str], name: str, default: float, lo: float, hi: float) -> float:
    raw = env.get(name, "").strip()
    if not raw:
        return default
    try:
        value = float(raw)
    except ValueError as exc:
        raise ValueError(f"{name} must be a number, got {raw!r}") from exc
    if not lo <= value <= hi:
        raise ValueError(f"{name} must be between {lo:g} and {hi:g}, got {value:g}")
    return value


def _choice(env: Mapping[str, str], name: str, default: str, allowed: tuple[str, ...]) -> str:
    raw = env.get(name, "").strip().lower()
    if not raw:
        return default
    if raw not in allowed:
        raise ValueError(f"{name} must be one of {', '.join(allowed)}, got {raw!r}")
    return raw


# FACESWAP_ENGINE: auto = inswapper when FACESWAP_INSWAPPER_MODEL is set, else classic.
ENGINES = ("auto", "classic", "inswapper")


@dataclass(frozen=True)
class WorkerSettings:
    """Limits and switches of the face-swap handler."""

    max_input_bytes: int = STORED_IMAGE.max_bytes
    max_pixels: int = STORED_IMAGE.max_pixels
    max_side: int = STORED_IMAGE.max_side
    min_side: int = STORED_IMAGE.min_side
    connect_timeout_s: float = 5.0
    download_timeout_s: float = 20.0
    max_redirects: int = 3
    allowed_hosts: tuple[str, ...] = ()
    allow_private_urls: bool = False
    result_data_uri: bool = False
    jpeg_quality: int = 92
    colour_strength: float = 0.5
    max_faces: int = 16
    inswapper_model: str = ""
    arcface_model: str = ""
    engine: str = "auto"  # auto | classic | inswapper (see ENGINES)

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> WorkerSettings:
        """Read FACESWAP_* variables; raise ValueError naming the variable when one is malformed."""
        e = os.environ if env is None else env
        hosts = tuple(h.strip().lower() for h in e.get("FACESWAP_ALLOWED_HOSTS", "").split(",") if h.strip())
        return cls(
            max_input_bytes=int(_num(e, "FACESWAP_MAX_INPUT_BYTES", cls.max_input_bytes, 1024, 1 << 30)),
            max_pixels=int(_num(e, "FACESWAP_MAX_PIXELS", cls.max_pixels, 64, 400_000_000)),
            max_side=int(_num(e, "FACESWAP_MAX_SIDE", cls.max_side, 16, 65_535)),
            connect_timeout_s=_num(e, "FACESWAP_CONNECT_TIMEOUT_S", cls.connect_timeout_s, 0.1, 120),
            download_timeout_s=_num(e, "FACESWAP_DOWNLOAD_TIMEOUT_S", cls.download_timeout_s, 0.1, 600),
            max_redirects=int(_num(e, "FACESWAP_MAX_REDIRECTS", cls.max_redirects, 0, 10)),
            allowed_hosts=hosts,
            allow_private_urls=_bool(e, "FACESWAP_ALLOW_PRIVATE_URLS", cls.allow_private_urls),
            result_data_uri=_bool(e, "FACESWAP_RESULT_DATA_URI", cls.result_data_uri),
            jpeg_quality=int(_num(e, "FACESWAP_JPEG_QUALITY", cls.jpeg_quality, 30, 100)),
            colour_strength=_num(e, "FACESWAP_COLOUR_STRENGTH", cls.colour_strength, 0.0, 1.0),
            max_faces=int(_num(e, "FACESWAP_MAX_FACES", cls.max_faces, 1, 64)),
            inswapper_model=e.get("FACESWAP_INSWAPPER_MODEL", "").strip(),
            arcface_model=e.get("FACESWAP_ARCFACE_MODEL", "").strip(),
            engine=_choice(e, "FACESWAP_ENGINE", cls.engine, ENGINES),
        )
