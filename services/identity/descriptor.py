"""dlib's face detector, 5-point landmarks and ResNet face descriptor.

dlib comes from ``dlib-bin`` (prebuilt wheels: the ``dlib`` sdist needs CMake and a compiler) and the
model files from ``face-recognition-models``. That package's ``__init__`` imports ``pkg_resources``,
which setuptools 81 deprecated and later releases removed, so the files are found through the
package's import spec without running it.
"""

from __future__ import annotations

import importlib.util
import threading
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from services.identity import descriptor_distance

MODELS_PACKAGE = "face_recognition_models"
LANDMARKS_MODEL = "shape_predictor_5_face_landmarks.dat"
DESCRIPTOR_MODEL = "dlib_face_recognition_resnet_model_v1.dat"


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
        """Width times height."""
        return self.width * self.height

    @classmethod
    def around(cls, box: tuple[float, float, float, float]) -> FaceBox:
        """A box from another detector's (x, y, w, h), as integers."""
        x, y, w, h = box
        return cls(round(x), round(y), max(1, round(w)), max(1, round(h)))


def model_file(name: str) -> Path:
    """The path of one of ``face-recognition-models``' files; FileNotFoundError when it is not installed."""
    spec = importlib.util.find_spec(MODELS_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError(f"the {MODELS_PACKAGE} package is not installed (pip install face-recognition-models)")
    path = Path(next(iter(spec.submodule_search_locations))) / "models" / name
    if not path.is_file():
        raise FileNotFoundError(f"{path} is missing from the {MODELS_PACKAGE} package")
    return path


class IdentityMetric:
    """dlib's face detector, 5-point landmarks and ResNet descriptor, loaded once (thread-safe).

    The 5-point landmark model aligns the face for the descriptor, as in dlib's own face
    recognition example; the 68-point model of the same package is trained on iBUG 300-W, whose
    licence excludes commercial use.
    """

    def __init__(self, upsample: int = 1) -> None:
        import dlib

        self._dlib = dlib
        self._lock = threading.Lock()
        self._upsample = upsample
        self._detector = dlib.get_frontal_face_detector()
        self._landmarks = dlib.shape_predictor(str(model_file(LANDMARKS_MODEL)))
        self._encoder = dlib.face_recognition_model_v1(str(model_file(DESCRIPTOR_MODEL)))

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
