"""Face detection and 468-point landmarks with mediapipe 0.10.x (models ship inside the wheel).

A full-range BlazeFace detector finds every face with a confidence; FaceMesh then runs on a
crop around each detection, which keeps the mesh tied to that face and works for small faces
that FaceMesh's own short-range detector would miss in a large image.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass
from typing import Any

import numpy as np

# Mesh indices of the five keypoints that alignment-based swappers (insightface) use, in image
# order: eye on the image's left, eye on the image's right, nose tip, mouth corner left, right.
_EYE_LEFT = (33, 133)
_EYE_RIGHT = (362, 263)
_NOSE_TIP = 1
_MOUTH_LEFT = 61
_MOUTH_RIGHT = 291
_CHEEK_LEFT = 234  # the face's widest points, image left and right
_CHEEK_RIGHT = 454
YAW_GAIN = 0.68  # the nose tip's shift across the face, in face widths, per tan(yaw)
KEYPOINT_NAMES = ("left_eye", "right_eye", "nose", "mouth_left", "mouth_right")

# Outer lip contour (mesh indices), used by the mouth mask.
MOUTH_OUTER = (61, 185, 40, 39, 37, 0, 267, 269, 270, 409, 291, 375, 321, 405, 314, 17, 84, 181, 91, 146)
# Inner lip contour, in order: the opening of the mouth (teeth, tongue) lies inside it.
MOUTH_INNER = (78, 191, 80, 81, 82, 13, 312, 311, 310, 415, 308, 324, 318, 402, 317, 14, 87, 178, 88, 95)
# Face oval (mesh indices), in order around the face.
FACE_OVAL = (
    10, 338, 297, 332, 284, 251, 389, 356, 454, 323, 361, 288, 397, 365, 379, 378, 400, 377, 152,
    148, 176, 149, 150, 136, 172, 58, 132, 93, 234, 127, 162, 21, 54, 103, 67, 109,
)  # fmt: skip


@dataclass(frozen=True)
class Face:
    """One detected face in pixel coordinates of the image it was found in."""

    box: tuple[float, float, float, float]  # x, y, width, height
    confidence: float
    mesh: np.ndarray | None  # (468, 2) float32, or None when the mesh could not be fitted

    @property
    def center(self) -> tuple[float, float]:
        x, y, w, h = self.box
        return x + w / 2.0, y + h / 2.0

    @property
    def area(self) -> float:
        return self.box[2] * self.box[3]

    def keypoints(self) -> np.ndarray:
        """The five alignment keypoints (5, 2); needs the mesh."""
        if self.mesh is None:
            raise ValueError("face has no landmarks")
        m = self.mesh
        return np.stack(
            [
                m[list(_EYE_LEFT)].mean(axis=0),
                m[list(_EYE_RIGHT)].mean(axis=0),
                m[_NOSE_TIP],
                m[_MOUTH_LEFT],
                m[_MOUTH_RIGHT],
            ]
        ).astype(np.float32)

    def yaw_degrees(self) -> float:
        """About how far the face is turned left or right (0 = facing the camera), from the mesh.

        The nose tip's place between the two sides of the face (landmarks 234 and 454, by the
        ears): on a head seen from the front it lies halfway, and it moves out by YAW_GAIN times
        the face's width times tan(yaw) as the head turns. YAW_GAIN is measured on FaceMesh's own
        3-D landmarks turned by known angles (within 1° from 0° to 75°). A face in full profile
        gets a squashed mesh that reads only ~50°.
        """
        if self.mesh is None:
            raise ValueError("face has no landmarks")
        left, right, nose = self.mesh[_CHEEK_LEFT], self.mesh[_CHEEK_RIGHT], self.mesh[_NOSE_TIP]
        axis = right - left
        width = float(np.linalg.norm(axis))
        if width < 1e-6:
            return 90.0
        offset = float(np.dot(nose - left, axis)) / (width * width) - 0.5
        return float(np.degrees(np.arctan(abs(offset) / YAW_GAIN)))

    def to_json(self) -> dict[str, Any]:
        """The face as the detect_faces output describes it (box, confidence, landmarks)."""
        x, y, w, h = self.box
        out: dict[str, Any] = {
            "box": [round(x, 1), round(y, 1), round(w, 1), round(h, 1)],
            "confidence": round(self.confidence, 4),
        }
        if self.mesh is not None:
            kps = self.keypoints()
            out["landmarks"] = {n: [round(float(p[0]), 1), round(float(p[1]), 1)] for n, p in zip(
                KEYPOINT_NAMES, kps, strict=True)}
        else:
            out["landmarks"] = {}
        return out


def order_faces(faces: list[Face]) -> list[Face]:
    """Sort faces top-to-bottom, then left-to-right within a row.

    Faces whose centres lie within half a (median) face height of the first face of a row
    belong to that row; rows are read top to bottom and each row left to right.
    """
    if len(faces) < 2:
        return list(faces)
    by_y = sorted(faces, key=lambda f: f.center[1])
    tolerance = 0.5 * float(np.median([f.box[3] for f in faces]))
    rows: list[list[Face]] = []
    for face in by_y:
        if rows and face.center[1] - rows[-1][0].center[1] <= tolerance:
            rows[-1].append(face)
        else:
            rows.append([face])
    return [f for row in rows for f in sorted(row, key=lambda f: f.center[0])]


def _iou(a: tuple[float, float, float, float], b: tuple[float, float, float, float]) -> float:
    ax2, ay2, bx2, by2 = a[0] + a[2], a[1] + a[3], b[0] + b[2], b[1] + b[3]
    iw = max(0.0, min(ax2, bx2) - max(a[0], b[0]))
    ih = max(0.0, min(ay2, by2) - max(a[1], b[1]))
    inter = iw * ih
    union = a[2] * a[3] + b[2] * b[3] - inter
    return inter / union if union > 0 else 0.0


class FaceDetector:
    """Finds faces with box, confidence and a 468-point mesh. Not thread-safe inside; guarded by a lock."""

    def __init__(self, min_confidence: float = 0.5, max_faces: int = 16) -> None:
        import mediapipe as mp  # heavy import, done once per process

        self._lock = threading.Lock()
        self._max_faces = max_faces
        self._detectors = [
            mp.solutions.face_detection.FaceDetection(model_selection=1, min_detection_confidence=min_confidence),
            mp.solutions.face_detection.FaceDetection(model_selection=0, min_detection_confidence=min_confidence),
        ]
        self._mesh = mp.solutions.face_mesh.FaceMesh(
            static_image_mode=True, max_num_faces=1, refine_landmarks=False, min_detection_confidence=0.3
        )

    def close(self) -> None:
        """Release the mediapipe graphs."""
        for d in self._detectors:
            d.close()
        self._mesh.close()

    def detect(self, rgb: np.ndarray, with_mesh: bool = True) -> list[Face]:
        """Every face in an RGB uint8 image, ordered top-to-bottom then left-to-right."""
        with self._lock:
            boxes = self._boxes(rgb)
            faces = [Face(box, score, self._fit_mesh(rgb, box) if with_mesh else None) for box, score in boxes]
        return order_faces(faces)

    def _boxes(self, rgb: np.ndarray) -> list[tuple[tuple[float, float, float, float], float]]:
        h, w = rgb.shape[:2]
        found: list[tuple[tuple[float, float, float, float], float]] = []
        # The full-range model finds small and large faces; the short-range one is the fallback
        # for close-up portraits the full-range model sometimes misses.
        for detector in self._detectors:
            result = detector.process(rgb)
            for det in result.detections or []:
                rb = det.location_data.relative_bounding_box
                x0, y0 = max(0.0, rb.xmin * w), max(0.0, rb.ymin * h)
                x1, y1 = min(float(w), (rb.xmin + rb.width) * w), min(float(h), (rb.ymin + rb.height) * h)
                if x1 - x0 < 4 or y1 - y0 < 4:
                    continue
                found.append(((x0, y0, x1 - x0, y1 - y0), float(det.score[0])))
            if found:
                break
        found.sort(key=lambda item: -item[1])
        kept: list[tuple[tuple[float, float, float, float], float]] = []
        for box, score in found:
            if all(_iou(box, k[0]) < 0.4 for k in kept):
                kept.append((box, score))
        return kept[: self._max_faces]

    def _fit_mesh(self, rgb: np.ndarray, box: tuple[float, float, float, float]) -> np.ndarray | None:
        h, w = rgb.shape[:2]
        x, y, bw, bh = box
        cx, cy = x + bw / 2.0, y + bh / 2.0
        half = 1.0 * max(bw, bh)
        x0, y0 = int(max(0, cx - half)), int(max(0, cy - half))
        x1, y1 = int(min(w, cx + half)), int(min(h, cy + half))
        crop = np.ascontiguousarray(rgb[y0:y1, x0:x1])
        if crop.shape[0] < 8 or crop.shape[1] < 8:
            return None
        result = self._mesh.process(crop)
        if not result.multi_face_landmarks:
            return None
        lms = result.multi_face_landmarks[0].landmark
        pts = np.array([(p.x * crop.shape[1] + x0, p.y * crop.shape[0] + y0) for p in lms], dtype=np.float32)
        mx, my = pts.mean(axis=0)
        # The mesh must belong to this detection, not to a neighbour that shares the crop.
        if not (x <= mx <= x + bw and y <= my <= y + bh):
            return None
        return pts[:468]
