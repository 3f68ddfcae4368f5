"""The bucket's key layout, and the checks of keys that callers hand back.

- ``refs/<sha256>.<ext>``: reference faces, content-addressed (the same face is stored once);
- ``tmp/<job_id>/<index>-<nonce>-target.<ext>``: swap inputs, deleted when the swap ends;
- ``results/<job_id>/<index>-<swapped|original>.<ext>``: what the caller gets back.
"""

from __future__ import annotations

import hashlib
import re
import secrets

from services.common.images import EXTENSION_BY_MIME

TEMP_PREFIX = "tmp/"
REFS_PREFIX = "refs/"
RESULTS_PREFIX = "results/"

_REFERENCE_KEY = re.compile(r"^refs/[0-9a-f]{64}\.(?:jpg|png|webp)$")
_TEMP_KEY = re.compile(r"^tmp/(?P<job>[^/]+)/(?P<index>\d+)-[0-9a-f]{8}-target\.(?:jpg|png|webp)$")


def reference_key(data: bytes, mime: str) -> str:
    """``refs/<sha256>.<ext>`` for an image's bytes."""
    return f"{REFS_PREFIX}{hashlib.sha256(data).hexdigest()}.{EXTENSION_BY_MIME[mime]}"


def temp_key(job_id: str, index: int, mime: str) -> str:
    """A fresh temporary key for a swap input (a nonce keeps retries of one job apart)."""
    return f"{TEMP_PREFIX}{job_id}/{index}-{secrets.token_hex(4)}-target.{EXTENSION_BY_MIME[mime]}"


def result_key(job_id: str, index: int, swapped: bool, mime: str) -> str:
    """``results/<job_id>/<index>-<swapped|original>.<ext>``."""
    kind = "swapped" if swapped else "original"
    return f"{RESULTS_PREFIX}{job_id}/{index}-{kind}.{EXTENSION_BY_MIME[mime]}"


def is_reference_key(key: str) -> bool:
    """True for a key of the form PutReference hands out."""
    return _REFERENCE_KEY.match(key) is not None


def is_temp_key_of(key: str, job_id: str, index: int) -> bool:
    """True for a temporary target key of this job and image (as PutTarget and Swap hand out)."""
    match = _TEMP_KEY.match(key)
    return match is not None and match["job"] == job_id and int(match["index"]) == index
