"""The face-swap engine: source face onto target faces, on a CPU, with no downloaded weights.

Classic pipeline per target face:
1. warp: the source face's texture is mapped onto the target face's geometry with a piecewise
   affine warp over a Delaunay triangulation of the 468 mesh landmarks (so the result keeps the
   target's face shape, pose and expression);
2. colour: in Lab, the warped face's mean and spread move part of the way toward the target
   face's (``colour_strength``), so the skin tone stays the source's but the lighting meets the
   target's at the seam;
3. optional restoration (``use_face_enhancer``) and mouth mask (``mouth_mask``);
4. blend: a feathered mask that lies strictly inside the target's face hull, so every pixel
   outside the face is left exactly as it was.

An optional ONNX backend (inswapper) replaces step 1 when a model file is configured.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Protocol

import cv2
import numpy as np
from scipy.spatial import Delaunay

from services.faceswap_worker.detect import FACE_OVAL, MOUTH_OUTER, Face, FaceDetector
from services.faceswap_worker.enhance import restore_face


class NoFaceError(ValueError):
    """No usable face in one of the images; the message names which one."""


@dataclass(frozen=True)
class SwapOptions:
    """Per-request switches (see the README's input contract)."""

    mouth_mask: bool = False
    use_face_enhancer: bool = False
    many_faces: bool = False
    colour_strength: float = 0.5  # 0 keeps the source's face colours, 1 adopts the target's


@dataclass
class SwapResult:
    """The swapped image (RGB, target's size) and what was done."""

    image: np.ndarray
    faces_swapped: int
    target_faces: int
    timings_ms: dict[str, float] = field(default_factory=dict)


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


class FaceRenderer(Protocol):
    """Produces the source face drawn in the target face's place, inside a region of the target."""

    name: str

    def render(
        self, source: np.ndarray, source_face: Face, target: np.ndarray, target_face: Face, roi: Roi
    ) -> tuple[np.ndarray, np.ndarray]:
        """(face pixels RGB uint8 of roi.shape, coverage mask float32 0..1 of roi.shape)."""
        ...


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


class PiecewiseAffineRenderer:
    """Warps the source face onto the target's landmarks triangle by triangle (no model weights)."""

    name = "classic"

    def render(
        self, source: np.ndarray, source_face: Face, target: np.ndarray, target_face: Face, roi: Roi
    ) -> tuple[np.ndarray, np.ndarray]:
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


def _lab(img: np.ndarray) -> np.ndarray:
    return cv2.cvtColor(img.astype(np.float32) / 255.0, cv2.COLOR_RGB2LAB)


def transfer_colour(face: np.ndarray, reference: np.ndarray, mask: np.ndarray, strength: float) -> np.ndarray:
    """Move the face's Lab mean and standard deviation (inside mask) ``strength`` of the way to the reference's."""
    if strength <= 0:
        return face
    sel = mask > 0
    if sel.sum() < 16:
        return face
    f_lab, r_lab = _lab(face), _lab(reference)
    f_px, r_px = f_lab[sel], r_lab[sel]
    f_mu, f_sd = f_px.mean(axis=0), f_px.std(axis=0) + 1e-3
    r_mu, r_sd = r_px.mean(axis=0), r_px.std(axis=0) + 1e-3
    mu = f_mu + strength * (r_mu - f_mu)
    sd = f_sd + strength * (r_sd - f_sd)
    out = (f_lab - f_mu) / f_sd * sd + mu
    out[..., 0] = np.clip(out[..., 0], 0, 100)
    rgb = cv2.cvtColor(out.astype(np.float32), cv2.COLOR_LAB2RGB)
    return np.clip(rgb * 255.0 + 0.5, 0, 255).astype(np.uint8)


def blend_alpha(hull: np.ndarray, face_size: float) -> np.ndarray:
    """A float32 0..1 feathered mask that is zero everywhere outside ``hull`` (uint8 0/255)."""
    sigma = max(1.0, 0.04 * face_size)
    inset = int(np.ceil(2.5 * sigma)) + 1
    kernel = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (2 * inset + 1, 2 * inset + 1))
    core = cv2.erode(hull, kernel)
    alpha = cv2.GaussianBlur(core.astype(np.float32) / 255.0, (0, 0), sigma)
    alpha[hull == 0] = 0.0
    return alpha


class SwapEngine:
    """Detects faces and swaps a source face onto target faces."""

    def __init__(self, detector: FaceDetector | None = None, renderer: FaceRenderer | None = None) -> None:
        self.detector = detector or FaceDetector()
        self.renderer: FaceRenderer = renderer or PiecewiseAffineRenderer()

    def source_face(self, source: np.ndarray, label: str = "source") -> Face:
        """The most prominent face of the source image (largest, with landmarks)."""
        faces = [f for f in self.detector.detect(source) if f.mesh is not None]
        if not faces:
            raise NoFaceError(f"no face found in {label} image")
        return max(faces, key=lambda f: f.area * f.confidence)

    def target_faces(self, target: np.ndarray) -> list[Face]:
        """Target faces that can be swapped, in detect_faces order."""
        faces = [f for f in self.detector.detect(target) if f.mesh is not None]
        if not faces:
            raise NoFaceError("no face found in target image")
        return faces

    def swap(self, source: np.ndarray, target: np.ndarray, options: SwapOptions) -> SwapResult:
        """Swap the source's face onto the target's largest face (or every face with many_faces)."""
        src_face = self.source_face(source)
        faces = self.target_faces(target)
        chosen = faces if options.many_faces else [max(faces, key=lambda f: f.area)]
        out = self.paste_all(target, [(source, src_face, f) for f in chosen], options)
        return SwapResult(out, len(chosen), len(faces))

    def paste_all(
        self, target: np.ndarray, pairs: list[tuple[np.ndarray, Face, Face]], options: SwapOptions
    ) -> np.ndarray:
        """Render each (source image, source face, target face) onto a copy of the target."""
        out = target.copy()
        for source, src_face, dst_face in pairs:
            self.paste_one(out, target, source, src_face, dst_face, options)
        return out

    def paste_one(
        self,
        out: np.ndarray,
        target: np.ndarray,
        source: np.ndarray,
        src_face: Face,
        dst_face: Face,
        options: SwapOptions,
    ) -> None:
        """Swap one face in place in ``out``; ``target`` is the untouched original."""
        assert dst_face.mesh is not None
        roi = face_roi(dst_face, target.shape)
        tgt = target[roi.slices]
        face, coverage = self.renderer.render(source, src_face, target, dst_face, roi)
        hull = polygon_mask(dst_face.mesh[list(FACE_OVAL)], roi)
        hull[coverage <= 0.5] = 0
        face_size = float(np.sqrt(dst_face.area))
        inner = cv2.erode(hull, np.ones((5, 5), np.uint8))
        face = transfer_colour(face, tgt, inner, options.colour_strength)
        if options.use_face_enhancer:
            face = restore_face(face, inner, face_size)
        alpha = blend_alpha(hull, face_size)
        if options.mouth_mask:
            alpha *= 1.0 - mouth_alpha(dst_face, roi, face_size)
        region = out[roi.slices].astype(np.float32)
        a = alpha[..., None]
        blended = region + a * (face.astype(np.float32) - region)
        out[roi.slices] = np.clip(blended + 0.5, 0, 255).astype(np.uint8)


def mouth_alpha(face: Face, roi: Roi, face_size: float) -> np.ndarray:
    """A feathered 0..1 mask over the target's mouth (lips, a little beyond), to keep it."""
    assert face.mesh is not None
    mouth = polygon_mask(face.mesh[list(MOUTH_OUTER)], roi)
    grow = max(1, int(0.03 * face_size))
    mouth = cv2.dilate(mouth, cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (2 * grow + 1, 2 * grow + 1)))
    return cv2.GaussianBlur(mouth.astype(np.float32) / 255.0, (0, 0), max(1.0, 0.02 * face_size))
