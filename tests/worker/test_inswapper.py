"""The optional ONNX backend, exercised with tiny stand-in models built here (no real weights exist offline)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from services.faceswap_worker.engine import SwapEngine, SwapOptions
from services.faceswap_worker.handler import build_engine
from services.faceswap_worker.inswapper import InswapperRenderer, alignment_matrix
from services.faceswap_worker.settings import WorkerSettings

pytestmark = pytest.mark.unit


def _save(graph: onnx.GraphProto, path: Path) -> None:
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    onnx.save(model, str(path))


@pytest.fixture(scope="module")
def models(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """An "inswapper" that returns its target crop darkened to (0.5 + |latent[0]|) of its brightness,
    and an "ArcFace" that pools the crop's colour and projects it to 512 numbers."""
    folder = tmp_path_factory.mktemp("onnx")
    swap_graph = helper.make_graph(
        [
            helper.make_node("Slice", ["source", "starts", "ends", "axes"], ["first"]),
            helper.make_node("Abs", ["first"], ["gain0"]),
            helper.make_node("Add", ["gain0", "half"], ["gain"]),
            helper.make_node("Reshape", ["gain", "shape4"], ["gain4"]),
            helper.make_node("Mul", ["target", "gain4"], ["scaled"]),
            helper.make_node("Clip", ["scaled", "zero", "one"], ["output"]),
        ],
        "tiny_inswapper",
        [helper.make_tensor_value_info("target", TensorProto.FLOAT, [1, 3, 128, 128]),
         helper.make_tensor_value_info("source", TensorProto.FLOAT, [1, 512])],
        [helper.make_tensor_value_info("output", TensorProto.FLOAT, [1, 3, 128, 128])],
        initializer=[
            numpy_helper.from_array(np.array([0], np.int64), "starts"),
            numpy_helper.from_array(np.array([1], np.int64), "ends"),
            numpy_helper.from_array(np.array([1], np.int64), "axes"),
            numpy_helper.from_array(np.array([1, 1, 1, 1], np.int64), "shape4"),
            numpy_helper.from_array(np.array(0.0, np.float32), "zero"),
            numpy_helper.from_array(np.array(1.0, np.float32), "one"),
            numpy_helper.from_array(np.array(0.5, np.float32), "half"),
            numpy_helper.from_array(np.eye(512, dtype=np.float32), "emap"),  # last, as insightface reads it
        ],
    )
    rng = np.random.default_rng(0)
    rec_graph = helper.make_graph(
        [
            helper.make_node("ReduceMean", ["data"], ["pooled"], axes=[2, 3], keepdims=0),
            helper.make_node("MatMul", ["pooled", "proj"], ["embedding"]),
        ],
        "tiny_arcface",
        [helper.make_tensor_value_info("data", TensorProto.FLOAT, [1, 3, 112, 112])],
        [helper.make_tensor_value_info("embedding", TensorProto.FLOAT, [1, 512])],
        initializer=[numpy_helper.from_array(rng.normal(size=(3, 512)).astype(np.float32), "proj")],
    )
    swapper, arcface = folder / "inswapper_128.onnx", folder / "w600k_r50.onnx"
    _save(swap_graph, swapper)
    _save(rec_graph, arcface)
    return swapper, arcface


def test_alignment_maps_keypoints_onto_the_template() -> None:
    kps = np.array([[100, 100], [160, 100], [130, 130], [105, 160], [155, 160]], np.float32)
    m = alignment_matrix(kps, 128)
    mapped = kps @ m[:, :2].T + m[:, 2]
    assert np.all(mapped > 0) and np.all(mapped < 128)
    assert mapped[0][0] < mapped[1][0] and mapped[2][1] < mapped[3][1]


def test_backend_is_used_only_when_a_model_is_configured(models: tuple[Path, Path]) -> None:
    assert build_engine(WorkerSettings()).renderer.name == "classic"
    engine = build_engine(WorkerSettings(inswapper_model=str(models[0]), arcface_model=str(models[1])))
    assert engine.renderer.name == "inswapper"
    with pytest.raises(ValueError, match="FACESWAP_ARCFACE_MODEL"):
        InswapperRenderer(str(models[0]), "")


def test_inswapper_output_is_pasted_back_into_the_face_only(
    models: tuple[Path, Path], engine: SwapEngine, astronaut: np.ndarray, grace_hopper: np.ndarray
) -> None:
    onnx_engine = SwapEngine(engine.detector, InswapperRenderer(str(models[0]), str(models[1])))
    result = onnx_engine.swap(grace_hopper, astronaut, SwapOptions(colour_strength=0.0))
    out = result.image
    assert out.shape == astronaut.shape and result.faces_swapped == 1
    face = engine.detector.detect(astronaut)[0]
    x, y, w, h = (int(v) for v in face.box)
    inside = out[y + h // 4 : y + 3 * h // 4, x + w // 4 : x + 3 * w // 4].astype(float)
    original = astronaut[y + h // 4 : y + 3 * h // 4, x + w // 4 : x + 3 * w // 4].astype(float)
    assert inside.mean() < original.mean() - 20  # the stand-in model darkened the face it was given
    assert np.array_equal(out[:, : max(0, x - 40)], astronaut[:, : max(0, x - 40)])
