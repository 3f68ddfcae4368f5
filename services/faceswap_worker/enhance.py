"""Face restoration pass (``use_face_enhancer``), confined to the face region.

It is classical image processing, not a learned restorer (no GFPGAN/CodeFormer weights):
1. an edge-preserving bilateral filter removes the blockiness and noise that warping and
   JPEG leave, without blurring edges;
2. an unsharp mask restores fine detail that resampling a smaller source face softened;
3. CLAHE on the Lab lightness channel restores local contrast (mixed in at half strength).
Pixels outside the face mask are returned unchanged.
"""

from __future__ import annotations

import cv2
import numpy as np


def restore_face(face: np.ndarray, mask: np.ndarray, face_size: float) -> np.ndarray:
    """Restore detail inside ``mask`` (uint8 0/255) of an RGB uint8 face region."""
    if not mask.any():
        return face
    smooth = cv2.bilateralFilter(face, d=5, sigmaColor=20, sigmaSpace=3)
    sigma = float(np.clip(face_size / 120.0, 0.8, 3.0))
    blur = cv2.GaussianBlur(smooth, (0, 0), sigma)
    sharp = cv2.addWeighted(smooth, 1.7, blur, -0.7, 0)
    lab = cv2.cvtColor(sharp, cv2.COLOR_RGB2LAB)
    clahe = cv2.createCLAHE(clipLimit=1.5, tileGridSize=(4, 4))
    lightness = clahe.apply(lab[..., 0])
    lab[..., 0] = cv2.addWeighted(lab[..., 0], 0.5, lightness, 0.5, 0)
    restored = cv2.cvtColor(lab, cv2.COLOR_LAB2RGB)
    out = face.copy()
    sel = mask > 0
    out[sel] = restored[sel]
    return out
