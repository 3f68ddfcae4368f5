"""The swapper's unchanged check against the worker's real swaps of every test face.

The check (``services/swapper/unchanged.py``, Pillow only, so it imports here too) must call every
real swap changed, the 40 px face with ``mouth_mask`` included, and every target the worker could
send back untouched (re-encoded as its JPEG) unchanged.
"""

from __future__ import annotations

import io
import itertools

import numpy as np
import pytest
from PIL import Image

from services.faceswap_worker import samples
from services.faceswap_worker.engine import NoFaceError, SwapEngine, SwapOptions
from services.faceswap_worker.inputs import encode_jpeg
from services.swapper.unchanged import MIN_CHANGED, Fingerprint, compare, fingerprint

pytestmark = pytest.mark.unit

PHOTOS = samples.quality_faces()
# What the worker answers with (FACESWAP_JPEG_QUALITY's default).
WORKER_JPEG_QUALITY = 92


def _sent_back(image: np.ndarray) -> Fingerprint:
    with Image.open(io.BytesIO(encode_jpeg(image, WORKER_JPEG_QUALITY))) as decoded:
        return fingerprint(decoded)


@pytest.mark.parametrize("options", [SwapOptions(), SwapOptions(mouth_mask=True)], ids=["plain", "mouth_mask"])
def test_every_real_swap_is_a_change_and_every_untouched_target_is_not(engine: SwapEngine,
                                                                       options: SwapOptions) -> None:
    swapped = 0
    fewest = None
    for reference, target in itertools.permutations(PHOTOS, 2):
        if reference.person == target.person:
            continue
        try:
            result = engine.swap(reference.image, target.image, options).image
        except NoFaceError:  # the profile photo is refused, as a source or a target
            continue
        sent = fingerprint(Image.fromarray(target.image))
        change = compare(sent, _sent_back(result))
        assert not change.unchanged, f"{reference.name} → {target.name}: {change}"
        fewest = change.changed if fewest is None else min(fewest, change.changed)
        swapped += 1
    assert swapped >= 12
    assert fewest is not None and fewest >= 3 * MIN_CHANGED  # the 40 px face: 36 measured


@pytest.mark.parametrize("photo", PHOTOS, ids=lambda p: p.name)
def test_a_target_sent_back_untouched_is_unchanged(photo: samples.FacePhoto) -> None:
    change = compare(fingerprint(Image.fromarray(photo.image)), _sent_back(photo.image))
    assert change.unchanged and change.changed == 0
