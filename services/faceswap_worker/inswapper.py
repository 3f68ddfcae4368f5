"""Optional ONNX backend: insightface's inswapper (128×128) with an ArcFace recogniser for the source identity.

Used when FACESWAP_INSWAPPER_MODEL and FACESWAP_ARCFACE_MODEL name model files (and FACESWAP_ENGINE
is not ``classic``); no weights ship with the project and nothing is downloaded. onnxruntime is
imported only here. The steps follow insightface's ``INSwapper.get``: the target face aligned to the
128×128 template (five keypoints, least-squares similarity), the source identity as the ArcFace
embedding (112×112 crop, (x − 127.5) / 127.5) projected by the model's ``emap`` and normalised, the
model run, and its 128×128 face warped back; the engine then pastes it inside the face oval only.
"""

from __future__ import annotations

import os

import cv2
import numpy as np
from skimage.transform import SimilarityTransform

from services.faceswap_worker.detect import Face
from services.faceswap_worker.region import Roi

# ArcFace's five-point template for a 112×112 crop (insightface.utils.face_align.arcface_dst).
ARCFACE_TEMPLATE = np.array(
    [[38.2946, 51.6963], [73.5318, 51.5014], [56.0252, 71.7366], [41.5493, 92.3655], [70.7299, 92.2041]],
    np.float32,
)


def alignment_matrix(keypoints: np.ndarray, size: int) -> np.ndarray:
    """The similarity transform (2×3) that maps five keypoints onto the ArcFace template at ``size``."""
    if size % 112 == 0:
        template = ARCFACE_TEMPLATE * (size / 112.0)
    else:
        template = ARCFACE_TEMPLATE * (size / 128.0)
        template[:, 0] += 8.0 * (size / 128.0)
    # A least-squares similarity over the five points, as insightface's estimate_norm computes it
    # (skimage's SimilarityTransform), so crops match what the models were trained on.
    transform = SimilarityTransform()
    if not transform.estimate(keypoints.astype(np.float64), template.astype(np.float64)):
        raise ValueError("could not align the face")
    return np.asarray(transform.params[:2], np.float32)


class InswapperRenderer:
    """Renders the source identity onto the target face with an inswapper ONNX model."""

    name = "inswapper"
    reshapes = False  # the model makes the face's geometry itself, from the target's crop

    def __init__(self, model_path: str, arcface_path: str) -> None:
        try:
            import onnx
            import onnxruntime as ort
            from onnx import numpy_helper
        except ImportError as exc:  # pragma: no cover - both are in the worker's requirements
            raise RuntimeError("FACESWAP_INSWAPPER_MODEL is set but onnxruntime/onnx are not installed") from exc
        if not arcface_path:
            raise ValueError("FACESWAP_ARCFACE_MODEL is required with FACESWAP_INSWAPPER_MODEL")
        for name, path in (("FACESWAP_INSWAPPER_MODEL", model_path), ("FACESWAP_ARCFACE_MODEL", arcface_path)):
            if not os.path.isfile(path):
                raise ValueError(f"{name}: no model file at {path}")
        # CUDA when the image has onnxruntime-gpu and a GPU (the pinned onnxruntime is CPU-only).
        providers = [p for p in ("CUDAExecutionProvider", "CPUExecutionProvider") if p in ort.get_available_providers()]
        self._swapper = ort.InferenceSession(model_path, providers=providers)
        self._recogniser = ort.InferenceSession(arcface_path, providers=providers)
        # The identity projection is the model's last initializer (as insightface reads it).
        self._emap = numpy_helper.to_array(onnx.load(model_path).graph.initializer[-1]).astype(np.float32)
        inputs = self._swapper.get_inputs()
        self._target_name, self._source_name = inputs[0].name, inputs[1].name
        self._size = int(inputs[0].shape[2])
        rec_input = self._recogniser.get_inputs()[0]
        self._rec_name, self._rec_size = rec_input.name, int(rec_input.shape[2])

    def latent(self, image: np.ndarray, face: Face) -> np.ndarray:
        """The source identity vector the swapper takes (1, 512), from an ArcFace embedding."""
        matrix = alignment_matrix(face.keypoints(), self._rec_size)
        crop = cv2.warpAffine(image, matrix, (self._rec_size, self._rec_size), borderValue=0.0)
        blob = ((crop.astype(np.float32) - 127.5) / 127.5).transpose(2, 0, 1)[None]
        embedding = self._recogniser.run(None, {self._rec_name: blob})[0].reshape(1, -1)
        embedding /= np.linalg.norm(embedding) + 1e-8
        latent = embedding @ self._emap
        return (latent / (np.linalg.norm(latent) + 1e-8)).astype(np.float32)

    def render(
        self, source: np.ndarray, source_face: Face, target: np.ndarray, target_face: Face, roi: Roi
    ) -> tuple[np.ndarray, np.ndarray]:
        matrix = alignment_matrix(target_face.keypoints(), self._size)
        crop = cv2.warpAffine(target, matrix, (self._size, self._size), borderValue=0.0)
        blob = (crop.astype(np.float32) / 255.0).transpose(2, 0, 1)[None]
        pred = self._swapper.run(None, {self._target_name: blob, self._source_name: self.latent(source, source_face)})
        fake = np.clip(pred[0][0].transpose(1, 2, 0) * 255.0 + 0.5, 0, 255).astype(np.uint8)
        inverse = cv2.invertAffineTransform(matrix)
        inverse[:, 2] -= (roi.x0, roi.y0)
        size = (roi.shape[1], roi.shape[0])
        face = cv2.warpAffine(fake, inverse, size, flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE)
        ones = np.ones((self._size, self._size), np.float32)
        coverage = cv2.warpAffine(ones, inverse, size, flags=cv2.INTER_LINEAR, borderValue=0.0)
        return face, coverage
