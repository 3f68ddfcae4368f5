"""The optional ONNX backend, run end to end with stand-in models built here (no real weights exist offline).

The stand-ins have the exact signatures of the real files: ``inswapper_128.onnx`` takes ``target``
(1, 3, 128, 128) and ``source`` (1, 512) and returns ``output`` (1, 3, 128, 128), with the identity
projection ``emap`` (512 × 512) as its last initializer; the ArcFace recogniser (``w600k_r50.onnx``)
takes ``input.1`` (N, 3, 112, 112) and returns ``683`` (N, 512). What they compute is chosen so each
step of the path can be checked: alignment to the 128×128 template, the source embedding through
``emap``, inference, paste-back.
"""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from services.faceswap_worker.detect import FACE_OVAL
from services.faceswap_worker.engine import SwapEngine, SwapOptions
from services.faceswap_worker.handler import build_engine
from services.faceswap_worker.inswapper import ARCFACE_TEMPLATE, InswapperRenderer, alignment_matrix
from services.faceswap_worker.settings import WorkerSettings

pytestmark = pytest.mark.unit

RNG = np.random.default_rng(0)
EMAP = RNG.normal(size=(512, 512)).astype(np.float32)
PROJ = RNG.normal(size=(3, 512)).astype(np.float32)
GAIN = 4.0  # the colour stand-in paints the face 0.5 + GAIN * latent[:3]


def _save(graph: onnx.GraphProto, path: Path) -> Path:
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    onnx.save(model, str(path))
    return path


def _swapper(path: Path, paints_latent: bool) -> Path:
    """An inswapper stand-in: returns the target crop unchanged, or a face painted the latent's colour."""
    io = (
        [helper.make_tensor_value_info("target", TensorProto.FLOAT, [1, 3, 128, 128]),
         helper.make_tensor_value_info("source", TensorProto.FLOAT, [1, 512])],
        [helper.make_tensor_value_info("output", TensorProto.FLOAT, [1, 3, 128, 128])],
    )
    if paints_latent:
        nodes = [
            helper.make_node("Slice", ["source", "starts", "ends", "axes"], ["first3"]),  # (1, 3)
            helper.make_node("Mul", ["first3", "gain"], ["scaled"]),
            helper.make_node("Add", ["scaled", "half"], ["colour"]),
            helper.make_node("Reshape", ["colour", "shape4"], ["colour4"]),  # (1, 3, 1, 1)
            helper.make_node("Mul", ["target", "zero"], ["blank"]),
            helper.make_node("Add", ["blank", "colour4"], ["painted"]),
            helper.make_node("Clip", ["painted", "lo", "hi"], ["output"]),
        ]
        consts = [
            numpy_helper.from_array(np.array([0], np.int64), "starts"),
            numpy_helper.from_array(np.array([3], np.int64), "ends"),
            numpy_helper.from_array(np.array([1], np.int64), "axes"),
            numpy_helper.from_array(np.array([1, 3, 1, 1], np.int64), "shape4"),
            numpy_helper.from_array(np.array(GAIN, np.float32), "gain"),
            numpy_helper.from_array(np.array(0.5, np.float32), "half"),
            numpy_helper.from_array(np.array(0.0, np.float32), "zero"),
            numpy_helper.from_array(np.array(0.0, np.float32), "lo"),
            numpy_helper.from_array(np.array(1.0, np.float32), "hi"),
        ]
    else:
        nodes = [
            helper.make_node("ReduceSum", ["source"], ["total"], keepdims=0),  # uses the input, changes nothing
            helper.make_node("Mul", ["total", "zero"], ["nothing"]),
            helper.make_node("Add", ["target", "nothing"], ["output"]),
        ]
        consts = [numpy_helper.from_array(np.array(0.0, np.float32), "zero")]
    emap = numpy_helper.from_array(EMAP, "emap")  # last, where insightface reads it
    return _save(helper.make_graph(nodes, "inswapper_stand_in", *io, initializer=[*consts, emap]), path)


def _arcface(path: Path) -> Path:
    """An ArcFace stand-in: the crop's mean colour projected to 512 numbers."""
    graph = helper.make_graph(
        [
            helper.make_node("ReduceMean", ["input.1"], ["pooled"], axes=[2, 3], keepdims=0),
            helper.make_node("MatMul", ["pooled", "proj"], ["683"]),
        ],
        "arcface_stand_in",
        [helper.make_tensor_value_info("input.1", TensorProto.FLOAT, ["None", 3, 112, 112])],
        [helper.make_tensor_value_info("683", TensorProto.FLOAT, ["None", 512])],
        initializer=[numpy_helper.from_array(PROJ, "proj")],
    )
    return _save(graph, path)


@pytest.fixture(scope="module")
def models(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    folder = tmp_path_factory.mktemp("onnx")
    return {
        "identity": _swapper(folder / "inswapper_identity.onnx", paints_latent=False),
        "paint": _swapper(folder / "inswapper_paint.onnx", paints_latent=True),
        "arcface": _arcface(folder / "w600k_r50.onnx"),
    }


def _inner_box(engine: SwapEngine, image: np.ndarray, fraction: float) -> tuple[slice, slice]:
    face = max(engine.detector.detect(image), key=lambda f: f.area)
    x, y, w, h = face.box
    cx, cy = x + w / 2, y + h * 0.55
    half = fraction * w / 2
    return slice(int(cy - half), int(cy + half)), slice(int(cx - half), int(cx + half))


def test_alignment_is_insightfaces_similarity_onto_the_template() -> None:
    # Keypoints that are the 112 template turned 20°, scaled 2.5× and moved: the fit undoes exactly that.
    angle = np.radians(20)
    rot = 2.5 * np.array([[np.cos(angle), -np.sin(angle)], [np.sin(angle), np.cos(angle)]])
    kps = ARCFACE_TEMPLATE @ rot.T + np.array([300.0, 120.0])
    m112 = alignment_matrix(kps, 112)
    assert np.allclose(kps @ m112[:, :2].T + m112[:, 2], ARCFACE_TEMPLATE, atol=1e-3)
    # insightface's 128 template is the 112 one at scale 1, moved 8 px right (128 is not a multiple of 112).
    m128 = alignment_matrix(kps, 128)
    assert np.allclose(kps @ m128[:, :2].T + m128[:, 2], ARCFACE_TEMPLATE + np.array([8.0, 0.0]), atol=1e-3)


def test_engine_choice_follows_faceswap_engine(models: dict[str, Path], tmp_path: Path) -> None:
    paths = {"inswapper_model": str(models["identity"]), "arcface_model": str(models["arcface"])}
    assert build_engine(WorkerSettings()).renderer.name == "classic"
    assert build_engine(WorkerSettings(**paths)).renderer.name == "inswapper"  # auto: the model is set
    assert build_engine(WorkerSettings(engine="classic", **paths)).renderer.name == "classic"
    assert build_engine(WorkerSettings(engine="inswapper", **paths)).renderer.name == "inswapper"
    with pytest.raises(ValueError, match="FACESWAP_ENGINE=inswapper needs FACESWAP_INSWAPPER_MODEL"):
        build_engine(WorkerSettings(engine="inswapper"))
    with pytest.raises(ValueError, match="FACESWAP_ARCFACE_MODEL is required"):
        InswapperRenderer(str(models["identity"]), "")
    with pytest.raises(ValueError, match=f"FACESWAP_ARCFACE_MODEL: no model file at {tmp_path}/missing.onnx"):
        InswapperRenderer(str(models["identity"]), str(tmp_path / "missing.onnx"))
    with pytest.raises(ValueError, match="FACESWAP_ENGINE='roop' is not one of auto, classic, inswapper"):
        WorkerSettings.from_env({"FACESWAP_ENGINE": "roop"})


def test_the_aligned_crop_goes_in_and_comes_back_to_the_same_place(
    models: dict[str, Path], engine: SwapEngine, grace_hopper: np.ndarray, astronaut: np.ndarray
) -> None:
    # A model that returns its target crop unchanged: after alignment to 128×128, inference and
    # paste-back, the face must land where it was (a misplaced crop would show as a large difference).
    onnx_engine = SwapEngine(engine.detector, InswapperRenderer(str(models["identity"]), str(models["arcface"])))
    result = onnx_engine.swap(astronaut, grace_hopper, SwapOptions(colour_strength=0.0)).image
    inner = _inner_box(engine, grace_hopper, 0.5)

    def diff(a: np.ndarray, b: np.ndarray) -> float:
        return float(np.abs(a[inner].astype(int) - b[inner].astype(int)).mean())

    # What survives the trip: the face resampled to the 128×128 crop and back, in place.
    face = max(engine.detector.detect(grace_hopper), key=lambda f: f.area)
    matrix = alignment_matrix(face.keypoints(), 128)
    crop = cv2.warpAffine(grace_hopper, matrix, (128, 128), borderValue=0.0)
    size = (grace_hopper.shape[1], grace_hopper.shape[0])
    expected = cv2.warpAffine(crop, cv2.invertAffineTransform(matrix), size, flags=cv2.INTER_LINEAR)
    assert diff(result, expected) < 1.5
    assert diff(result, grace_hopper) < 0.5 * diff(result, np.roll(grace_hopper, 4, axis=1))


def test_the_source_identity_goes_through_arcface_and_emap(
    models: dict[str, Path], engine: SwapEngine, grace_hopper: np.ndarray, astronaut: np.ndarray
) -> None:
    renderer = InswapperRenderer(str(models["paint"]), str(models["arcface"]))
    onnx_engine = SwapEngine(engine.detector, renderer)
    result = onnx_engine.swap(grace_hopper, astronaut, SwapOptions(colour_strength=0.0))
    assert result.faces_swapped == 1

    # What the path must compute: the source's 112×112 ArcFace crop, normalised, embedded, made
    # unit length, projected by emap, unit length again; the stand-in paints 0.5 + GAIN * latent[:3].
    source_face = max(engine.detector.detect(grace_hopper), key=lambda f: f.area)
    crop = cv2.warpAffine(grace_hopper, alignment_matrix(source_face.keypoints(), 112), (112, 112), borderValue=0.0)
    embedding = ((crop.astype(np.float32) - 127.5) / 127.5).mean(axis=(0, 1)) @ PROJ
    embedding /= np.linalg.norm(embedding)
    latent = embedding @ EMAP
    latent /= np.linalg.norm(latent)
    expected = np.clip(0.5 + GAIN * latent[:3], 0, 1) * 255
    without_emap = np.clip(0.5 + GAIN * embedding[:3], 0, 1) * 255
    assert np.abs(expected - without_emap).max() > 20  # the check below can tell the two apart
    assert np.allclose(renderer.latent(grace_hopper, source_face)[0], latent, atol=1e-4)

    centre = result.image[_inner_box(engine, astronaut, 0.3)].reshape(-1, 3).astype(float)
    assert np.abs(centre.mean(axis=0) - expected).max() < 2.5
    assert centre.std(axis=0).max() < 2.0  # one flat colour: the model's output, not the target


def test_inswapper_output_is_pasted_back_into_the_face_only(
    models: dict[str, Path], engine: SwapEngine, astronaut: np.ndarray, grace_hopper: np.ndarray
) -> None:
    onnx_engine = SwapEngine(engine.detector, InswapperRenderer(str(models["paint"]), str(models["arcface"])))
    out = onnx_engine.swap(grace_hopper, astronaut, SwapOptions()).image
    face = max(engine.detector.detect(astronaut), key=lambda f: f.area)
    assert face.mesh is not None
    hull = np.zeros(astronaut.shape[:2], np.uint8)
    cv2.fillPoly(hull, [np.round(face.mesh[list(FACE_OVAL)]).astype(np.int32)], 255)
    outside = cv2.dilate(hull, np.ones((5, 5), np.uint8)) == 0
    assert np.array_equal(out[outside], astronaut[outside])
    assert not np.array_equal(out[hull > 0], astronaut[hull > 0])
