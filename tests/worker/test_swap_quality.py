"""The engine judged by the identity metric: does the result look like the reference person?

Photos: ``samples.quality_faces()`` (Collins, Hopper, a 40 px Collins, a group); distances are
dlib's (under 0.6 = the same person). The bench (bench/faceswap.py) measures every pair; these
tests pin the behaviours each engine step is there for.
"""

from __future__ import annotations

import cv2
import numpy as np
import pytest

from services.faceswap_worker import engine as engine_module
from services.faceswap_worker import region, samples
from services.faceswap_worker.detect import FACE_OVAL, MOUTH_INNER, Face
from services.faceswap_worker.engine import SwapEngine, SwapOptions
from services.faceswap_worker.quality import SAME_PERSON, FaceBox, IdentityMetric, outside_change, seam_delta_e

pytestmark = pytest.mark.unit


@pytest.fixture(scope="module")
def metric() -> IdentityMetric:
    return IdentityMetric()


@pytest.fixture(scope="module")
def photos() -> dict[str, np.ndarray]:
    return {p.name: p.image for p in samples.quality_faces()}


def _largest(engine: SwapEngine, image: np.ndarray) -> Face:
    return max(engine.detector.detect(image), key=lambda f: f.area)


def _box(face: Face) -> FaceBox:
    return FaceBox.around(face.box)


def _oval(shape: tuple[int, ...], face: Face) -> np.ndarray:
    assert face.mesh is not None
    mask = np.zeros(shape[:2], np.uint8)
    cv2.fillPoly(mask, [np.round(face.mesh[list(FACE_OVAL)]).astype(np.int32)], 255)
    return mask


def _identity(metric: IdentityMetric, reference: np.ndarray, image: np.ndarray, box: FaceBox) -> float:
    ref, other = metric.descriptor(reference), metric.descriptor(image, box)
    assert ref is not None and other is not None
    return float(np.linalg.norm(ref - other))


@pytest.mark.parametrize(("ref", "tgt"), [("collins", "hopper"), ("hopper", "collins"), ("collins", "group")])
def test_the_result_is_recognised_as_the_reference(engine: SwapEngine, metric: IdentityMetric,
                                                    photos: dict[str, np.ndarray], ref: str, tgt: str) -> None:
    reference, target = photos[ref], photos[tgt]
    box = _box(_largest(engine, target))
    result = engine.swap(reference, target, SwapOptions()).image
    assert _identity(metric, reference, target, box) > SAME_PERSON  # two people before the swap
    assert _identity(metric, reference, result, box) < 0.45  # the reference person after it
    before, after = metric.descriptor(target, box), metric.descriptor(result, box)
    assert before is not None and after is not None
    assert np.linalg.norm(before - after) > 0.5  # and no longer the target person


def test_reshaping_the_inner_face_brings_the_result_closer_to_the_reference(
    engine: SwapEngine, metric: IdentityMetric, photos: dict[str, np.ndarray]
) -> None:
    reference, target = photos["collins"], photos["hopper"]
    box = _box(_largest(engine, target))
    flat = SwapEngine(engine.detector, shape_strength=0.0)  # the source's texture on the target's landmarks
    shaped = _identity(metric, reference, engine.swap(reference, target, SwapOptions()).image, box)
    unshaped = _identity(metric, reference, flat.swap(reference, target, SwapOptions()).image, box)
    assert shaped < unshaped - 0.08


def test_a_small_face_is_swapped_at_a_larger_working_resolution(
    engine: SwapEngine, metric: IdentityMetric, photos: dict[str, np.ndarray], monkeypatch: pytest.MonkeyPatch
) -> None:
    reference, target = photos["hopper"], photos["collins_small"]
    face = _largest(engine, target)
    assert np.sqrt(face.area) < 50
    inside = cv2.erode(_oval(target.shape, face), np.ones((3, 3), np.uint8)) > 0

    def roughness(image: np.ndarray) -> float:
        grey = cv2.cvtColor(image, cv2.COLOR_RGB2GRAY)
        return float(np.abs(cv2.Laplacian(grey, cv2.CV_32F))[inside].mean())

    result = engine.swap(reference, target, SwapOptions()).image
    monkeypatch.setattr(region, "WORK_FACE_PX", 0.0)
    aliased = engine.swap(reference, target, SwapOptions()).image
    assert _identity(metric, reference, result, _box(face)) < 0.55
    assert roughness(result) < 0.9 * roughness(aliased)  # sampled straight at 40 px, texture turns to noise


def test_an_open_target_mouth_keeps_its_own_opening(engine: SwapEngine, photos: dict[str, np.ndarray]) -> None:
    # Collins smiles with her teeth showing; Hopper's lips are closed. Warping closed lips over an
    # open mouth stretches them into a red blob: the opening (her teeth) must stay hers.
    reference, target = photos["hopper"], photos["collins"]
    face = _largest(engine, target)
    assert face.mesh is not None
    opening = np.zeros(target.shape[:2], np.uint8)
    cv2.fillPoly(opening, [np.round(face.mesh[list(MOUTH_INNER)]).astype(np.int32)], 255)
    opening = cv2.erode(opening, np.ones((3, 3), np.uint8)) > 0
    assert opening.sum() > 50
    in_place = SwapEngine(engine.detector, shape_strength=0.0)  # the lips stay where they are
    result = in_place.swap(reference, target, SwapOptions()).image

    def lab(image: np.ndarray) -> np.ndarray:
        return np.asarray(cv2.cvtColor(image.astype(np.float32) / 255.0, cv2.COLOR_RGB2LAB)[opening].mean(axis=0))

    assert np.linalg.norm(lab(result) - lab(target)) < 8.0


def test_the_seam_takes_the_target_light(engine: SwapEngine, photos: dict[str, np.ndarray],
                                         monkeypatch: pytest.MonkeyPatch) -> None:
    reference, target = photos["collins"], photos["hopper"]
    face = _largest(engine, target)
    mask = cv2.dilate(_oval(target.shape, face), np.ones((5, 5), np.uint8))
    size = float(np.sqrt(face.area))
    matched = seam_delta_e(target, engine.swap(reference, target, SwapOptions()).image, mask, size)
    monkeypatch.setattr(engine_module, "match_border_light", lambda face, target, hull, size: face)
    plain = seam_delta_e(target, engine.swap(reference, target, SwapOptions()).image, mask, size)
    assert matched < 3.5
    assert matched < 0.7 * plain


def test_many_faces_makes_every_face_the_reference(engine: SwapEngine, metric: IdentityMetric,
                                                    photos: dict[str, np.ndarray]) -> None:
    reference, target = photos["hopper"], photos["group"]
    faces = engine.detector.detect(target)
    assert len(faces) == 2  # Hopper and Collins; the cameraman in profile (~55 px) is not found
    result = engine.swap(reference, target, SwapOptions(many_faces=True))
    assert (result.faces_swapped, result.target_faces) == (2, 2)
    for face in faces:
        assert _identity(metric, reference, result.image, _box(face)) < 0.45
    union = np.maximum(*[cv2.dilate(_oval(target.shape, f), np.ones((5, 5), np.uint8)) for f in faces])
    assert outside_change(target, result.image, union) == 0
