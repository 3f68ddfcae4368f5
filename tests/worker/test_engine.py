"""The engine on real photos (scikit-image's astronaut and cameraman, matplotlib's Grace Hopper)."""

from __future__ import annotations

import cv2
import numpy as np
import pytest

from services.faceswap_worker import samples
from services.faceswap_worker.detect import FACE_OVAL, MOUTH_OUTER, Face, order_faces
from services.faceswap_worker.engine import MAX_YAW_DEGREES, NoFaceError, SwapEngine, SwapOptions
from services.faceswap_worker.warp import LIPS, shaped_mesh

pytestmark = pytest.mark.unit


def _iou(a: tuple[float, ...], b: tuple[float, ...]) -> float:
    ix = max(0.0, min(a[0] + a[2], b[0] + b[2]) - max(a[0], b[0]))
    iy = max(0.0, min(a[1] + a[3], b[1] + b[3]) - max(a[1], b[1]))
    inter = ix * iy
    return inter / (a[2] * a[3] + b[2] * b[3] - inter)


def _polygon(shape: tuple[int, ...], points: np.ndarray) -> np.ndarray:
    mask = np.zeros(shape[:2], np.uint8)
    cv2.fillPoly(mask, [np.round(points).astype(np.int32)], 255)
    return mask


def _lab_mean(image: np.ndarray, mask: np.ndarray) -> np.ndarray:
    lab = cv2.cvtColor(image.astype(np.float32) / 255.0, cv2.COLOR_RGB2LAB)
    return np.asarray(lab[mask > 0].mean(axis=0))


def _face(engine: SwapEngine, image: np.ndarray) -> Face:
    faces = engine.detector.detect(image)
    assert len(faces) == 1 and faces[0].mesh is not None
    return faces[0]


def test_detects_the_portrait_faces_with_landmarks(engine: SwapEngine, astronaut: np.ndarray,
                                                   grace_hopper: np.ndarray) -> None:
    for image, (cx, cy) in ((astronaut, (225, 120)), (grace_hopper, (265, 230))):
        face = _face(engine, image)
        x, y, w, h = face.box
        assert abs(x + w / 2 - cx) < 30 and abs(y + h / 2 - cy) < 40
        assert face.confidence > 0.7
        kps = face.keypoints()
        assert kps[0][0] < kps[1][0]  # left eye left of right eye
        assert kps[0][1] < kps[3][1] and kps[2][1] < kps[3][1]  # eyes and nose above the mouth
        assert face.to_json()["landmarks"].keys() == {"left_eye", "right_eye", "nose", "mouth_left", "mouth_right"}


def test_faces_are_ordered_top_to_bottom_then_left_to_right() -> None:
    def face(x: float, y: float) -> Face:
        return Face((x, y, 50.0, 50.0), 0.9, None)

    faces = [face(300, 210), face(10, 20), face(300, 5), face(20, 200), face(150, 12)]
    ordered = [(f.box[0], f.box[1]) for f in order_faces(faces)]
    assert ordered == [(10, 20), (150, 12), (300, 5), (20, 200), (300, 210)]


def test_detects_every_face_of_a_group_in_reading_order(engine: SwapEngine, astronaut: np.ndarray,
                                                       grace_hopper: np.ndarray) -> None:
    canvas = np.full((1200, 1100, 3), 200, np.uint8)
    canvas[0:512, 0:512] = astronaut
    canvas[40:640, 560:1072] = grace_hopper
    canvas[620:1132, 300:812] = astronaut
    faces = engine.detector.detect(canvas)
    assert len(faces) == 3
    centres = [f.center for f in faces]
    assert centres[0][0] < 512 and centres[1][0] > 560 and centres[2][1] > 620
    assert all(f.mesh is not None for f in faces)


def test_swap_keeps_target_geometry_moves_colour_to_source_and_leaves_the_rest(
    engine: SwapEngine, astronaut: np.ndarray, grace_hopper: np.ndarray
) -> None:
    # A source face stretched sideways has a geometry clearly unlike the target's.
    source, target = cv2.resize(grace_hopper, (700, 600), interpolation=cv2.INTER_AREA), astronaut
    src_face, tgt_face = _face(engine, source), _face(engine, target)
    assert src_face.mesh is not None and tgt_face.mesh is not None
    result = engine.swap(source, target, SwapOptions())
    out = result.image
    assert out.shape == target.shape and out.dtype == np.uint8
    assert result.faces_swapped == 1 and result.target_faces == 1

    # A face is still found where the target's was.
    out_face = _face(engine, out)
    assert _iou(out_face.box, tgt_face.box) > 0.6
    assert out_face.mesh is not None

    # Outside the face (its hull, plus a 2 px rounding margin) nothing changed, to the bit.
    hull = _polygon(target.shape, tgt_face.mesh[list(FACE_OVAL)])
    outside = cv2.dilate(hull, np.ones((5, 5), np.uint8)) == 0
    assert np.array_equal(out[outside], target[outside])
    assert not np.array_equal(out[hull > 0], target[hull > 0])

    # The outline stays the target's, far closer to it than the source face's own outline is (the
    # inner face moves toward the source's proportions: test_shaping_moves_the_inner_face_only).
    size = np.sqrt(tgt_face.area)
    matrix, _ = cv2.estimateAffinePartial2D(src_face.mesh, tgt_face.mesh)
    src_aligned = cv2.transform(src_face.mesh[None], matrix)[0]
    oval = list(FACE_OVAL)
    err_out = np.linalg.norm(out_face.mesh[oval] - tgt_face.mesh[oval], axis=1).mean() / size
    err_src = np.linalg.norm(src_aligned[oval] - tgt_face.mesh[oval], axis=1).mean() / size
    assert err_out < 0.05
    assert err_out < 0.65 * err_src

    # Colour statistics of the face move toward the source's.
    inner = cv2.erode(hull, np.ones((9, 9), np.uint8))
    src_inner = cv2.erode(_polygon(source.shape, src_face.mesh[list(FACE_OVAL)]), np.ones((9, 9), np.uint8))
    src_mean = _lab_mean(source, src_inner)
    before = np.linalg.norm(_lab_mean(target, inner) - src_mean)
    after = np.linalg.norm(_lab_mean(out, inner) - src_mean)
    assert after < 0.75 * before


def test_colour_strength_one_keeps_target_colour_statistics(
    engine: SwapEngine, astronaut: np.ndarray, grace_hopper: np.ndarray
) -> None:
    tgt_face = _face(engine, astronaut)
    assert tgt_face.mesh is not None
    inner = cv2.erode(_polygon(astronaut.shape, tgt_face.mesh[list(FACE_OVAL)]), np.ones((15, 15), np.uint8))
    half = engine.swap(grace_hopper, astronaut, SwapOptions(colour_strength=0.5)).image
    full = engine.swap(grace_hopper, astronaut, SwapOptions(colour_strength=1.0)).image
    target_mean = _lab_mean(astronaut, inner)
    assert np.linalg.norm(_lab_mean(full, inner) - target_mean) < np.linalg.norm(_lab_mean(half, inner) - target_mean)


def test_mouth_mask_keeps_the_target_mouth(engine: SwapEngine, astronaut: np.ndarray,
                                           grace_hopper: np.ndarray) -> None:
    tgt_face = _face(engine, astronaut)
    assert tgt_face.mesh is not None
    lips = cv2.erode(_polygon(astronaut.shape, tgt_face.mesh[list(MOUTH_OUTER)]), np.ones((3, 3), np.uint8)) > 0
    plain = engine.swap(grace_hopper, astronaut, SwapOptions()).image
    masked = engine.swap(grace_hopper, astronaut, SwapOptions(mouth_mask=True)).image
    diff_plain = np.abs(plain[lips].astype(int) - astronaut[lips]).mean()
    diff_masked = np.abs(masked[lips].astype(int) - astronaut[lips]).mean()
    assert diff_masked < 4.0
    assert diff_plain > 4 * diff_masked


def test_face_enhancer_restores_detail_inside_the_face_only(
    engine: SwapEngine, astronaut: np.ndarray, grace_hopper: np.ndarray
) -> None:
    tgt_face = _face(engine, grace_hopper)
    assert tgt_face.mesh is not None
    hull = _polygon(grace_hopper.shape, tgt_face.mesh[list(FACE_OVAL)])
    inner = cv2.erode(hull, np.ones((15, 15), np.uint8)) > 0
    plain = engine.swap(astronaut, grace_hopper, SwapOptions()).image
    enhanced = engine.swap(astronaut, grace_hopper, SwapOptions(use_face_enhancer=True)).image
    outside = cv2.dilate(hull, np.ones((5, 5), np.uint8)) == 0
    assert np.array_equal(enhanced[outside], grace_hopper[outside])

    def detail(img: np.ndarray) -> float:
        grey = cv2.cvtColor(img, cv2.COLOR_RGB2GRAY)
        return float(cv2.Laplacian(grey, cv2.CV_64F)[inner].var())

    assert detail(enhanced) > 1.2 * detail(plain)


def test_many_faces_swaps_every_face_and_default_only_the_largest(
    engine: SwapEngine, astronaut: np.ndarray, grace_hopper: np.ndarray
) -> None:
    small = cv2.resize(astronaut, (384, 384), interpolation=cv2.INTER_AREA)
    canvas = np.full((512, 900, 3), 180, np.uint8)
    canvas[:, 0:512] = astronaut
    canvas[64:448, 516:900] = small
    one = engine.swap(grace_hopper, canvas, SwapOptions())
    both = engine.swap(grace_hopper, canvas, SwapOptions(many_faces=True))
    assert (one.faces_swapped, one.target_faces) == (1, 2)
    assert (both.faces_swapped, both.target_faces) == (2, 2)
    assert np.array_equal(one.image[:, 516:], canvas[:, 516:])  # the smaller face was left alone
    assert not np.array_equal(both.image[:, 516:], canvas[:, 516:])


def test_no_face_errors_name_the_image(engine: SwapEngine, astronaut: np.ndarray) -> None:
    blank = np.full((256, 256, 3), 90, np.uint8)
    with pytest.raises(NoFaceError, match="no face found in source image"):
        engine.swap(blank, astronaut, SwapOptions())
    with pytest.raises(NoFaceError, match="no face found in target image"):
        engine.swap(astronaut, blank, SwapOptions())


def test_shaping_moves_the_inner_face_only(engine: SwapEngine, astronaut: np.ndarray,
                                           grace_hopper: np.ndarray) -> None:
    target, source = _face(engine, astronaut), _face(engine, grace_hopper)
    assert target.mesh is not None and source.mesh is not None
    size = float(np.sqrt(target.area))
    shaped = shaped_mesh(target.mesh, source.mesh, size, strength=0.6)
    matrix, _ = cv2.estimateAffinePartial2D(source.mesh, target.mesh)
    aligned = cv2.transform(source.mesh[None], matrix)[0]
    oval, lips = list(FACE_OVAL), list(LIPS)
    # The outline does not move; the eyes, brows and nose go part of the way to the source's.
    assert np.array_equal(shaped[oval], target.mesh[oval])
    middle = [33, 133, 362, 263, 1, 105, 334]  # eye corners, nose tip, brows: well inside the face
    before = np.linalg.norm(target.mesh[middle] - aligned[middle], axis=1)
    after = np.linalg.norm(shaped[middle] - aligned[middle], axis=1)
    assert np.allclose(after, 0.4 * before, atol=0.01 * size)
    # The lips keep the target's shape (moved and scaled as one piece), or stay put.
    centred = shaped[lips] - shaped[lips].mean(axis=0)
    original = target.mesh[lips] - target.mesh[lips].mean(axis=0)
    scale = np.linalg.norm(centred) / np.linalg.norm(original)
    assert np.allclose(centred, scale * original, atol=1e-3 * size)
    kept = shaped_mesh(target.mesh, source.mesh, size, strength=0.6, move_lips=False)
    assert np.array_equal(kept[lips], target.mesh[lips])
    assert np.array_equal(shaped_mesh(target.mesh, source.mesh, size, strength=0.0), target.mesh)


def test_faces_turned_too_far_are_refused_with_the_reason(engine: SwapEngine, astronaut: np.ndarray) -> None:
    profile = samples.cameraman()  # a man filming, in profile (his mesh, squashed, reads ~53°)
    face = _face(engine, profile)
    assert face.yaw_degrees() > MAX_YAW_DEGREES
    assert _face(engine, astronaut).yaw_degrees() < 15
    reason = r"that can be swapped: the face found is turned about \d+° from the camera \(at most 45° can be swapped\)"
    with pytest.raises(NoFaceError, match="no face found in source image " + reason):
        engine.swap(profile, astronaut, SwapOptions())
    with pytest.raises(NoFaceError, match="no face found in target image " + reason):
        engine.swap(astronaut, profile, SwapOptions())


def test_yaw_estimate_follows_a_head_turned_by_known_angles(astronaut: np.ndarray) -> None:
    # FaceMesh's own 3-D landmarks of a frontal face, turned about the vertical axis and projected:
    # the estimate from the 2-D landmarks must give back the angle.
    import mediapipe as mp

    with mp.solutions.face_mesh.FaceMesh(static_image_mode=True, max_num_faces=1) as mesh:
        found = mesh.process(astronaut).multi_face_landmarks
    assert found
    h, w = astronaut.shape[:2]
    points = np.array([(p.x * w, p.y * h, p.z * w) for p in found[0].landmark])[:468]
    points -= points.mean(axis=0)
    for degrees in (0, 15, 30, 45, 60):
        t = np.radians(degrees)
        turn = np.array([[np.cos(t), 0, np.sin(t)], [0, 1, 0], [-np.sin(t), 0, np.cos(t)]])
        face = Face((0.0, 0.0, 100.0, 100.0), 1.0, (points @ turn.T)[:, :2].astype(np.float32))
        assert abs(face.yaw_degrees() - degrees) < 4.0, degrees
