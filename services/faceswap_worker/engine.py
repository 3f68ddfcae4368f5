"""The face-swap engine: source face onto target faces, on a CPU, with no downloaded weights.

Pipeline per target face (a face under WORK_FACE_PX across is done on an enlarged copy of its
region and area-averaged back down):
1. shape: the target's landmarks, with the inner face moved part of the way toward the source's
   proportions (the outline, pose and expression stay the target's; ``warp.shaped_mesh``);
2. warp: the source face's texture is mapped onto those landmarks with a piecewise affine warp
   over a Delaunay triangulation of the 468 mesh landmarks; the mouth's opening stays the target's;
3. colour: in Lab, the warped face's mean and spread move part of the way toward the target
   face's (``colour_strength``), then its light is matched to the target's at the border, fading
   out inside (``blend.match_border_light``);
4. optional restoration (``use_face_enhancer``) and mouth mask (``mouth_mask``);
5. blend: a feathered mask that lies strictly inside the target's face hull, so every pixel
   outside the face is left exactly as it was.

Faces turned more than MAX_YAW_DEGREES from the camera are not swapped (:func:`unswappable`).
An optional ONNX backend (inswapper) replaces steps 1–2 when a model file is configured.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Protocol

import cv2
import numpy as np

from services.faceswap_worker.blend import blend_alpha, match_border_light, mouth_alpha, transfer_colour
from services.faceswap_worker.detect import FACE_OVAL, Face, FaceDetector
from services.faceswap_worker.enhance import restore_face
from services.faceswap_worker.region import Roi, face_roi, polygon_mask, upscaled_region, working_scale
from services.faceswap_worker.warp import (
    SHAPE_STRENGTH,
    PiecewiseAffineRenderer,
    keep_target_mouth_opening,
    shaped_mesh,
)

__all__ = ["NoFaceError", "Roi", "SwapEngine", "SwapOptions", "SwapResult", "unswappable"]

MAX_YAW_DEGREES = 45.0  # faces turned further than this from the camera are not swapped


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


class FaceRenderer(Protocol):
    """Produces the source face drawn in the target face's place, inside a region of the target."""

    name: str
    # True: it draws onto whatever landmarks it is given, and the engine gives it the target's
    # reshaped toward the source's; False: it makes its own geometry from the target's.
    reshapes: bool

    def render(
        self, source: np.ndarray, source_face: Face, target: np.ndarray, target_face: Face, roi: Roi
    ) -> tuple[np.ndarray, np.ndarray]:
        """(face pixels RGB uint8 of roi.shape, coverage mask float32 0..1 of roi.shape)."""
        ...


def unswappable(face: Face) -> str | None:
    """Why this face cannot be swapped (completing "the face found ..."), or None when it can.

    A face in profile shows one side; its landmarks on the hidden side are guesses, and a frontal
    face warped onto it (or from it) gives a smear, not the person: it is refused instead.
    """
    if face.mesh is None:
        return "has no usable landmarks"
    yaw = face.yaw_degrees()
    if yaw > MAX_YAW_DEGREES:
        return f"is turned about {yaw:.0f}° from the camera (at most {MAX_YAW_DEGREES:.0f}° can be swapped)"
    return None


def _no_usable_face(label: str, faces: list[Face]) -> str:
    if not faces:
        return f"no face found in {label} image"
    reason = unswappable(max(faces, key=lambda f: f.area))
    return f"no face found in {label} image that can be swapped: the face found {reason}"


class SwapEngine:
    """Detects faces and swaps a source face onto target faces."""

    def __init__(
        self,
        detector: FaceDetector | None = None,
        renderer: FaceRenderer | None = None,
        shape_strength: float = SHAPE_STRENGTH,
    ) -> None:
        self.detector = detector or FaceDetector()
        self.renderer: FaceRenderer = renderer or PiecewiseAffineRenderer()
        self.shape_strength = shape_strength  # 0: draw on the target's own landmarks

    def source_face(self, source: np.ndarray, label: str = "source") -> Face:
        """The most prominent swappable face of the source image (largest, with landmarks, not in profile)."""
        faces = [f for f in self.detector.detect(source) if f.mesh is not None]
        usable = [f for f in faces if unswappable(f) is None]
        if not usable:
            raise NoFaceError(_no_usable_face(label, faces))
        return max(usable, key=lambda f: f.area * f.confidence)

    def target_faces(self, target: np.ndarray) -> tuple[list[Face], int]:
        """The target faces that can be swapped, in detect_faces order, and how many faces it has."""
        faces = [f for f in self.detector.detect(target) if f.mesh is not None]
        usable = [f for f in faces if unswappable(f) is None]
        if not usable:
            raise NoFaceError(_no_usable_face("target", faces))
        return usable, len(faces)

    def swap(self, source: np.ndarray, target: np.ndarray, options: SwapOptions) -> SwapResult:
        """Swap the source's face onto the target's largest face (or every face with many_faces).

        Faces turned too far from the camera are left alone (:func:`unswappable`).
        """
        src_face = self.source_face(source)
        faces, total = self.target_faces(target)
        chosen = faces if options.many_faces else [max(faces, key=lambda f: f.area)]
        out = self.paste_all(target, [(source, src_face, f) for f in chosen], options)
        return SwapResult(out, len(chosen), total)

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
        """Swap one face in place in ``out``; ``target`` is the untouched original.

        A face smaller than WORK_FACE_PX across is rendered on an enlarged copy of its region and
        area-averaged back down (``region.working_scale``).
        """
        assert dst_face.mesh is not None
        roi = face_roi(dst_face, target.shape)
        scale = working_scale(float(np.sqrt(dst_face.area)))
        if scale > 1.0:
            work, work_face, work_roi = upscaled_region(target, dst_face, roi, scale)
        else:
            work, work_face, work_roi = target, dst_face, roi
        face, alpha = self.face_layer(source, src_face, work, work_face, work_roi, options)
        if scale > 1.0:
            size = (roi.shape[1], roi.shape[0])
            face = cv2.resize(face, size, interpolation=cv2.INTER_AREA)
            alpha = cv2.resize(alpha, size, interpolation=cv2.INTER_AREA)
            alpha[polygon_mask(dst_face.mesh[list(FACE_OVAL)], roi) == 0] = 0.0  # nothing outside the face
        region = out[roi.slices].astype(np.float32)
        a = alpha[..., None]
        blended = region + a * (face.astype(np.float32) - region)
        out[roi.slices] = np.clip(blended + 0.5, 0, 255).astype(np.uint8)

    def face_layer(
        self, source: np.ndarray, src_face: Face, target: np.ndarray, dst_face: Face, roi: Roi, options: SwapOptions
    ) -> tuple[np.ndarray, np.ndarray]:
        """The new face over ``roi`` (RGB uint8) and its blend weight (float32 0..1, zero outside the face)."""
        assert dst_face.mesh is not None and src_face.mesh is not None
        tgt = target[roi.slices]
        face_size = float(np.sqrt(dst_face.area))
        drawn_on = dst_face
        if self.renderer.reshapes:
            mesh = shaped_mesh(dst_face.mesh, src_face.mesh, face_size, self.shape_strength, not options.mouth_mask)
            drawn_on = Face(dst_face.box, dst_face.confidence, mesh)
        face, coverage = self.renderer.render(source, src_face, target, drawn_on, roi)
        if self.renderer.reshapes:
            assert drawn_on.mesh is not None
            keep_target_mouth_opening(face, target, dst_face.mesh, drawn_on.mesh, roi)
        hull = polygon_mask(dst_face.mesh[list(FACE_OVAL)], roi)
        hull[coverage <= 0.5] = 0
        inner = cv2.erode(hull, np.ones((5, 5), np.uint8))
        face = transfer_colour(face, tgt, inner, options.colour_strength)
        if options.use_face_enhancer:
            face = restore_face(face, inner, face_size)
        face = match_border_light(face, tgt, hull, face_size)
        alpha = blend_alpha(hull, face_size)
        if options.mouth_mask:
            alpha *= 1.0 - mouth_alpha(dst_face, roi, face_size)
        return face, alpha
