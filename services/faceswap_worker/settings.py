"""Worker settings, read once from the environment (see docs/faceswap_worker.md for the table).

The same pydantic-settings base as every service (``services.common.config``,
which needs nothing but pydantic-settings, installed in the worker's
environment too): typed fields with ranges, one clear error per bad value.
"""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import Field, StringConstraints, field_validator
from pydantic_settings import SettingsConfigDict

from services.common.config import CommaList, EnvSettings, Lowercase

# The system's one image-limit table; standard library only, so it imports here (see its docstring).
from services.common.image_limits import STORED_IMAGE


class WorkerSettings(EnvSettings):
    """Limits and switches of the face-swap handler: the FACESWAP_* variables."""

    model_config = SettingsConfigDict(env_prefix="FACESWAP_")

    max_input_bytes: int = Field(STORED_IMAGE.max_bytes, ge=1024, le=1 << 30)
    max_pixels: int = Field(STORED_IMAGE.max_pixels, ge=64, le=400_000_000)
    max_side: int = Field(STORED_IMAGE.max_side, ge=16, le=65_535)
    connect_timeout_s: float = Field(5.0, ge=0.1, le=120)
    download_timeout_s: float = Field(20.0, ge=0.1, le=600)
    max_redirects: int = Field(3, ge=0, le=10)
    # Hosts the worker may download inputs from (``*.example.com`` for subdomains); empty: any public host.
    allowed_hosts: CommaList = ()
    allow_private_urls: bool = False
    result_data_uri: bool = False
    jpeg_quality: int = Field(92, ge=30, le=100)
    colour_strength: float = Field(0.5, ge=0.0, le=1.0)
    max_faces: int = Field(16, ge=1, le=64)
    inswapper_model: Annotated[str, StringConstraints(strip_whitespace=True)] = ""
    arcface_model: Annotated[str, StringConstraints(strip_whitespace=True)] = ""
    # auto: inswapper when FACESWAP_INSWAPPER_MODEL is set, else classic.
    engine: Annotated[Literal["auto", "classic", "inswapper"], Lowercase] = "auto"

    @property
    def min_side(self) -> int:
        """Not a setting: below this the face detector has nothing to work with."""
        return STORED_IMAGE.min_side

    @field_validator("allowed_hosts")
    @classmethod
    def _lowercase_hosts(cls, hosts: tuple[str, ...]) -> tuple[str, ...]:
        return tuple(host.lower() for host in hosts)
