"""How good a face swap is, in numbers: identity distance, pixels changed outside the face, the seam.

Identity is dlib's ResNet face descriptor (128 numbers per face; the models ship in the
``face-recognition-models`` package, dlib itself in ``dlib-bin``): two faces whose descriptors lie
less than :data:`SAME_PERSON` apart are the same person by dlib's own threshold (99.38 % on LFW).
The question a swap must answer yes to is ``distance(reference, result) < SAME_PERSON``.

dlib and its models load only when :class:`IdentityMetric` is built; the pixel measures need
numpy and OpenCV alone.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass

import cv2
import numpy as np

SAME_PERSON = 0.6  # dlib's threshold on the descriptor distance


@dataclass(frozen=True)
class FaceBox:
    """A face rectangle in pixels (x, y, width, height) and the detector's score (None: given, not found)."""

    x: int
    y: int
    width: int
    height: int
    score: float | None = None

    @property
    def area(self) -> int:
        return self.width * self.height

    @classmethod
    def around(cls, box: tuple[float, float, float, float]) -> FaceBox:
        """A box from another detector's (x, y, w, h), as integers."""
        x, y, w, h = box
        return cls(round(x), round(y), max(1, round(w)), max(1, round(h)))


class IdentityMetric:
    """dlib's face detector, 5-point landmarks and ResNet descriptor, loaded once (thread-safe).

    The 5-point landmark model aligns the face for the descriptor, as in dlib's own face
    recognition example; the 68-point model of the same package is trained on iBUG 300-W, whose
    licence excludes commercial use.
    """

    def __init__(self, upsample: int = 1) -> None:
        import dlib
        import face_recognition_models as models

        self._dlib = dlib
        self._lock = threading.Lock()
        self._upsample = upsample
        self._detector = dlib.get_frontal_face_detector()
        self._landmarks = dlib.shape_predictor(models.pose_predictor_five_point_model_location())
        self._encoder = dlib.face_recognition_model_v1(models.face_recognition_model_location())

    def faces(self, rgb: np.ndarray) -> list[FaceBox]:
        """Frontal faces dlib finds (HOG), largest first; confident ones (score > 0) before the rest.

        Faces under ~40 px across are found by upsampling the image once more.
        """
        image = np.ascontiguousarray(rgb)
        with self._lock:
            rects, scores, _ = self._detector.run(image, self._upsample, -0.2)
            if not rects:
                rects, scores, _ = self._detector.run(image, self._upsample + 1, -0.2)
        found = [
            FaceBox(r.left(), r.top(), r.width(), r.height(), float(s)) for r, s in zip(rects, scores, strict=True)
        ]
        return sorted(found, key=lambda f: (f.score is not None and f.score <= 0, -f.area))

    def descriptor(self, rgb: np.ndarray, box: FaceBox | None = None) -> np.ndarray | None:
        """The 128-d descriptor of the face in ``box``, or of the largest face dlib finds; None if none.

        Pass ``box`` to measure a face dlib's frontal detector misses (a profile) or to measure the
        same place in two images (a target and its swapped result).
        """
        if box is None:
            faces = self.faces(rgb)
            if not faces:
                return None
            box = faces[0]
        image = np.ascontiguousarray(rgb)
        rect = self._dlib.rectangle(box.x, box.y, box.x + box.width - 1, box.y + box.height - 1)
        with self._lock:
            shape = self._landmarks(image, rect)
            vector = self._encoder.compute_face_descriptor(image, shape, 1)
        return np.asarray(vector, dtype=np.float64)

    def distance(self, a: np.ndarray, b: np.ndarray, box_a: FaceBox | None = None,
                 box_b: FaceBox | None = None) -> float | None:
        """Descriptor distance between the faces of two images (None when a face is missing)."""
        da, db = self.descriptor(a, box_a), self.descriptor(b, box_b)
        if da is None or db is None:
            return None
        return descriptor_distance(da, db)


def descriptor_distance(a: np.ndarray, b: np.ndarray) -> float:
    """Euclidean distance between two descriptors; under :data:`SAME_PERSON` is the same person."""
    return float(np.linalg.norm(np.asarray(a, np.float64) - np.asarray(b, np.float64)))


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
