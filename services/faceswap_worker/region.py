"""Where a face is worked on: its rectangle of the target, masks in it, and a larger working copy for small faces."""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np

from services.faceswap_worker.detect import Face

WORK_FACE_PX = 160.0  # faces smaller than this across are swapped at a larger working resolution
MAX_WORK_SCALE = 4.0


@dataclass(frozen=True)
class Roi:
    """A rectangle of the target image: rows y0:y1, columns x0:x1."""

    x0: int
    y0: int
    x1: int
    y1: int

    @property
    def slices(self) -> tuple[slice, slice]:
        return slice(self.y0, self.y1), slice(self.x0, self.x1)

    @property
    def shape(self) -> tuple[int, int]:
        return self.y1 - self.y0, self.x1 - self.x0


def face_roi(face: Face, image_shape: tuple[int, ...], pad: float = 0.1) -> Roi:
    """The bounding rectangle of a face's mesh, padded and clipped to the image."""
    assert face.mesh is not None
    x0, y0 = face.mesh.min(axis=0)
    x1, y1 = face.mesh.max(axis=0)
    px, py = (x1 - x0) * pad + 2, (y1 - y0) * pad + 2
    h, w = image_shape[:2]
    return Roi(
        int(max(0, np.floor(x0 - px))),
        int(max(0, np.floor(y0 - py))),
        int(min(w, np.ceil(x1 + px))),
        int(min(h, np.ceil(y1 + py))),
    )


def polygon_mask(points: np.ndarray, roi: Roi) -> np.ndarray:
    """A uint8 0/255 mask of roi.shape filled inside the polygon (image coordinates)."""
    mask = np.zeros(roi.shape, np.uint8)
    pts = np.round(points - np.array([roi.x0, roi.y0], np.float32)).astype(np.int32)
    cv2.fillPoly(mask, [pts], 255)
    return mask


def working_scale(face_size: float) -> float:
    """How much to enlarge a face's region before swapping it (1 = at its own resolution).

    Warping a 200 px source face straight onto a 40 px target face samples its texture too
    sparsely (aliasing: noise, not a face); rendering at WORK_FACE_PX and area-averaging back
    down keeps what survives at 40 px.
    """
    if face_size >= WORK_FACE_PX:
        return 1.0
    return float(min(MAX_WORK_SCALE, WORK_FACE_PX / max(face_size, 1.0)))


def upscaled_region(target: np.ndarray, face: Face, roi: Roi, scale: float) -> tuple[np.ndarray, Face, Roi]:
    """The roi of ``target`` enlarged ``scale`` times (bicubic), the face in its coordinates, and its full Roi."""
    assert face.mesh is not None
    h, w = roi.shape
    big_w, big_h = round(w * scale), round(h * scale)
    sx, sy = big_w / w, big_h / h
    region = cv2.resize(target[roi.slices], (big_w, big_h), interpolation=cv2.INTER_CUBIC)
    x, y, bw, bh = face.box
    mesh = (face.mesh - np.array([roi.x0, roi.y0], np.float32)) * np.array([sx, sy], np.float32)
    big = Face(((x - roi.x0) * sx, (y - roi.y0) * sy, bw * sx, bh * sy), face.confidence, mesh.astype(np.float32))
    return region, big, Roi(0, 0, big_w, big_h)
