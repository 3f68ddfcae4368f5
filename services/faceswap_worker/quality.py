"""How good a face swap is, in numbers: identity distance, pixels changed outside the face, the seam.

Identity is dlib's ResNet face descriptor (128 numbers per face; the models ship in the
``face-recognition-models`` package, dlib itself in ``dlib-bin``): two faces whose descriptors lie
less than :data:`SAME_PERSON` apart are the same person by dlib's own threshold (99.38 % on LFW).
The question a swap must answer yes to is ``distance(reference, result) < SAME_PERSON``. That part
lives in ``services/identity`` (this module re-exports it), which the swapper's identity check uses too.

dlib and its models load only when :class:`IdentityMetric` is built; the pixel measures need
numpy and OpenCV alone.
"""

from __future__ import annotations

import cv2
import numpy as np

# The identity part is shared with the swapper's identity check (FACE_SWAP_VERIFY=identity).
from services.identity import SAME_PERSON, descriptor_distance
from services.identity.descriptor import FaceBox, IdentityMetric

__all__ = ["SAME_PERSON", "FaceBox", "IdentityMetric", "descriptor_distance", "outside_change", "seam_delta_e"]


def outside_change(target: np.ndarray, result: np.ndarray, face_mask: np.ndarray) -> int:
    """The largest absolute pixel difference outside ``face_mask`` (nonzero = face); 0 = untouched."""
    outside = face_mask == 0
    if not outside.any():
        return 0
    return int(np.abs(result[outside].astype(np.int16) - target[outside].astype(np.int16)).max())


def seam_delta_e(target: np.ndarray, result: np.ndarray, face_mask: np.ndarray, face_size: float) -> float:
    """How far the swapped face's colour and light differ from the original skin where the two meet.

    The mean CIE76 colour difference (Lab, ΔE) between the result and the target, both blurred to
    their low frequencies (σ = 3 % of the face size, so skin texture does not count), over the band
    from 3 % to 15 % of the face size inside the face border. Around 2 is barely visible, over 10 a
    visible mask edge. 0 for a face that was not changed at all, so read it beside the identity.
    """
    size = max(8.0, float(face_size))
    inner = _erode(face_mask, 0.03 * size)
    deep = _erode(face_mask, 0.15 * size)
    band = (inner > 0) & (deep == 0)
    if not band.any():
        return 0.0
    sigma = 0.03 * size
    lab_t = cv2.cvtColor(cv2.GaussianBlur(target, (0, 0), sigma).astype(np.float32) / 255.0, cv2.COLOR_RGB2LAB)
    lab_r = cv2.cvtColor(cv2.GaussianBlur(result, (0, 0), sigma).astype(np.float32) / 255.0, cv2.COLOR_RGB2LAB)
    return float(np.linalg.norm(lab_r[band] - lab_t[band], axis=1).mean())


def _erode(mask: np.ndarray, radius: float) -> np.ndarray:
    r = max(1, round(radius))
    kernel = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (2 * r + 1, 2 * r + 1))
    return cv2.erode((mask > 0).astype(np.uint8), kernel)
