"""The classic renderer: the source face's texture warped onto landmarks, triangle by triangle.

The landmarks it warps onto are the target's, with the inner face moved part of the way toward
the source's proportions (:func:`shaped_mesh`), so the result keeps the target's outline, pose
and expression but looks like the source person; the mouth's opening stays the target's own
(:func:`keep_target_mouth_opening`).
"""

from __future__ import annotations

import cv2
import numpy as np
from scipy.spatial import Delaunay

from services.faceswap_worker.detect import FACE_OVAL, MOUTH_INNER, MOUTH_OUTER, Face
from services.faceswap_worker.region import Roi, polygon_mask

LIPS = tuple(sorted({*MOUTH_OUTER, *MOUTH_INNER}))
_MOUTH_CORNERS = (61, 291)
SHAPE_STRENGTH = 0.6  # how far the inner face moves toward the source's proportions
SHAPE_RAMP = 0.12  # × face size: the weight reaches SHAPE_STRENGTH this far inside the outline


def shaped_mesh(
    target: np.ndarray, source: np.ndarray, face_size: float, strength: float = SHAPE_STRENGTH, move_lips: bool = True
) -> np.ndarray:
    """The target's landmarks with the inner face moved ``strength`` of the way to the source's proportions.

    The source mesh is first aligned to the target's pose (a similarity transform), so only the
    shape moves: where the eyes, brows, nose and mouth sit and how large they are, much of what
    makes a face recognisable. The outline stays the target's (the weight falls to zero toward
    it, so the face still fits its head and hair). The lips keep the target's shape, so the
    expression stays the target's: they move and scale as one piece to the source's mouth, or
    stay where they are with ``move_lips=False`` (the mouth mask keeps the target's mouth in place).
    """
    if strength <= 0:
        return target
    t = target.astype(np.float64)
    matrix, _ = cv2.estimateAffinePartial2D(source.astype(np.float64), t)
    if matrix is None:
        return target
    aligned = source.astype(np.float64) @ matrix[:, :2].T + matrix[:, 2]
    oval = target[list(FACE_OVAL)].astype(np.float32)
    inside = np.array([cv2.pointPolygonTest(oval, (float(x), float(y)), True) for x, y in target])
    weight = strength * np.clip(inside / (SHAPE_RAMP * face_size), 0.0, 1.0)
    shaped = t + weight[:, None] * (aligned - t)
    lips = list(LIPS)
    if not move_lips:
        shaped[lips] = t[lips]
        return shaped.astype(np.float32)
    corners = list(_MOUTH_CORNERS)
    centre_t, centre_s = t[corners].mean(axis=0), aligned[corners].mean(axis=0)
    width_t = float(np.linalg.norm(t[corners[0]] - t[corners[1]]))
    width_s = float(np.linalg.norm(aligned[corners[0]] - aligned[corners[1]]))
    w = float(weight[lips].mean())
    scale = 1.0 + w * (width_s / max(width_t, 1e-6) - 1.0)
    shaped[lips] = centre_t + w * (centre_s - centre_t) + scale * (t[lips] - centre_t)
    return shaped.astype(np.float32)


def keep_target_mouth_opening(
    face: np.ndarray, target: np.ndarray, target_mesh: np.ndarray, shaped: np.ndarray, roi: Roi
) -> None:
    """Fill the mouth's opening in ``face`` (roi pixels, in place) with the target's own, moved with the lips.

    The opening (teeth, tongue) belongs to the target's expression: a closed source mouth has
    none, and warping its lips over an open mouth stretches them into a red blob.
    """
    opening = polygon_mask(shaped[list(MOUTH_INNER)], roi) > 0
    if not opening.any():
        return
    lips = list(LIPS)
    matrix, _ = cv2.estimateAffinePartial2D(shaped[lips].astype(np.float64), target_mesh[lips].astype(np.float64))
    if matrix is None:
        return
    matrix[:, 2] += matrix[:, :2] @ np.array([roi.x0, roi.y0], np.float64)  # from roi to image coordinates
    size = (roi.shape[1], roi.shape[0])
    mouth = cv2.warpAffine(target, matrix, size, flags=cv2.INTER_LINEAR | cv2.WARP_INVERSE_MAP,
                           borderMode=cv2.BORDER_REPLICATE)
    face[opening] = mouth[opening]


class PiecewiseAffineRenderer:
    """Warps the source face onto the given target landmarks triangle by triangle (no model weights)."""

    name = "classic"
    reshapes = True  # draws onto the landmarks it is given: the engine reshapes them toward the source

    def render(
        self, source: np.ndarray, source_face: Face, target: np.ndarray, target_face: Face, roi: Roi
    ) -> tuple[np.ndarray, np.ndarray]:
        """The source's texture over ``roi`` on ``target_face``'s landmarks, and where it covers (0/1)."""
        assert source_face.mesh is not None and target_face.mesh is not None
        dst = target_face.mesh.astype(np.float64) - np.array([roi.x0, roi.y0], np.float64)
        src = source_face.mesh.astype(np.float64)
        triangles = Delaunay(dst).simplices
        # One affine map per triangle, from ROI coordinates to source-image coordinates.
        tri_dst = np.concatenate([dst[triangles], np.ones((len(triangles), 3, 1))], axis=2)  # (K, 3, 3)
        tri_src = src[triangles]  # (K, 3, 2)
        valid = np.abs(np.linalg.det(tri_dst)) > 1e-6
        triangles, tri_dst, tri_src = triangles[valid], tri_dst[valid], tri_src[valid]
        maps = np.linalg.solve(tri_dst, tri_src)  # (K, 3, 2): [x y 1] @ M = [u v]
        index = np.full(roi.shape, -1, np.int32)
        for k, tri in enumerate(dst[triangles]):
            cv2.fillConvexPoly(index, np.round(tri).astype(np.int32), k)
        ys, xs = np.nonzero(index >= 0)
        m = maps[index[ys, xs]]  # (P, 3, 2)
        map_x = np.full(roi.shape, -1.0, np.float32)
        map_y = np.full(roi.shape, -1.0, np.float32)
        map_x[ys, xs] = xs * m[:, 0, 0] + ys * m[:, 1, 0] + m[:, 2, 0]
        map_y[ys, xs] = xs * m[:, 0, 1] + ys * m[:, 1, 1] + m[:, 2, 1]
        warped = cv2.remap(source, map_x, map_y, cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE)
        coverage = (index >= 0).astype(np.float32)
        return warped, coverage
