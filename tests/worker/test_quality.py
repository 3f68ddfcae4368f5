"""The quality measures themselves: dlib's identity distance, the outside change, the seam."""

from __future__ import annotations

import cv2
import numpy as np
import pytest

from services.faceswap_worker import samples
from services.faceswap_worker.quality import (
    SAME_PERSON,
    FaceBox,
    IdentityMetric,
    descriptor_distance,
    outside_change,
    seam_delta_e,
)

pytestmark = pytest.mark.unit


@pytest.fixture(scope="module")
def metric() -> IdentityMetric:
    return IdentityMetric()


def test_one_person_is_near_and_two_people_are_far(metric: IdentityMetric, astronaut: np.ndarray,
                                                   grace_hopper: np.ndarray) -> None:
    smaller = cv2.resize(astronaut, (400, 400), interpolation=cv2.INTER_AREA)
    mirrored = np.ascontiguousarray(astronaut[:, ::-1])
    same = metric.distance(astronaut, smaller)
    mirror = metric.distance(astronaut, mirrored)
    different = metric.distance(astronaut, grace_hopper)
    assert same is not None and mirror is not None and different is not None
    assert same < 0.25 and mirror < 0.35
    assert different > SAME_PERSON + 0.05


def test_descriptor_is_of_the_largest_confident_face(metric: IdentityMetric, astronaut: np.ndarray) -> None:
    faces = metric.faces(astronaut)
    assert faces and faces[0].score is not None and faces[0].score > 0
    x, y = faces[0].x + faces[0].width / 2, faces[0].y + faces[0].height / 2
    assert abs(x - 225) < 30 and abs(y - 120) < 40  # her face, not the badge on the suit
    vector = metric.descriptor(astronaut)
    assert vector is not None and vector.shape == (128,)
    assert descriptor_distance(vector, metric.descriptor(astronaut, faces[0])) == 0.0  # type: ignore[arg-type]


def test_no_face_gives_none_and_a_given_box_is_measured(metric: IdentityMetric) -> None:
    blank = np.full((200, 200, 3), 120, np.uint8)
    assert metric.faces(blank) == []
    assert metric.descriptor(blank) is None
    assert metric.distance(blank, blank) is None
    profile = samples.cameraman()
    # dlib's frontal detector hardly sees a profile (a weak score at best), but measures where it is told.
    assert all(f.score is not None and f.score < 0.3 for f in metric.faces(profile))
    vector = metric.descriptor(profile, FaceBox(200, 123, 76, 76))
    assert vector is not None and np.isfinite(vector).all()


def test_outside_change_is_the_largest_difference_outside_the_mask() -> None:
    target = np.full((50, 60, 3), 100, np.uint8)
    mask = np.zeros((50, 60), np.uint8)
    mask[10:30, 10:30] = 255
    result = target.copy()
    result[15, 15] = 0  # inside: does not count
    assert outside_change(target, result, mask) == 0
    result[40, 50, 1] = 107
    assert outside_change(target, result, mask) == 7


def test_seam_measures_a_colour_step_at_the_border_not_texture() -> None:
    rng = np.random.default_rng(0)
    target = np.full((200, 200, 3), (200, 150, 120), np.uint8)
    mask = np.zeros((200, 200), np.uint8)
    cv2.circle(mask, (100, 100), 60, 255, -1)
    assert seam_delta_e(target, target, mask, 120) == 0.0
    textured = np.clip(target + rng.normal(0, 12, target.shape), 0, 255).astype(np.uint8)
    shifted = target.copy()
    shifted[mask > 0] = (150, 150, 150)  # a grey face on warm skin
    assert seam_delta_e(target, textured, mask, 120) < 1.5
    assert seam_delta_e(target, shifted, mask, 120) > 15
