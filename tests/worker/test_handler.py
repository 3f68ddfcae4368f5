"""The RunPod handler's contract: process types, options, output shape, clear failures."""

from __future__ import annotations

import asyncio
import base64
import io

import numpy as np
import pytest
from PIL import Image

from services.faceswap_worker import handler as handler_module
from services.faceswap_worker.engine import SwapEngine
from services.faceswap_worker.handler import FaceSwapWorker
from services.faceswap_worker.settings import WorkerSettings
from services.stack.runpod_emulator.workers import to_run_result

pytestmark = pytest.mark.unit

BLANK = "data:image/png;base64," + base64.b64encode(
    (lambda b: (Image.new("RGB", (128, 128), (90, 90, 90)).save(b, "PNG"), b.getvalue())[1])(io.BytesIO())
).decode()


@pytest.fixture(scope="module")
def worker(engine: SwapEngine) -> FaceSwapWorker:
    return FaceSwapWorker(WorkerSettings(allow_private_urls=True), engine)


def _jpeg(result: str) -> np.ndarray:
    data = base64.b64decode(result.split(",", 1)[1] if result.startswith("data:") else result)
    assert data[:3] == b"\xff\xd8\xff"
    return np.asarray(Image.open(io.BytesIO(data)).convert("RGB"))


@pytest.mark.parametrize("process_type", ["single_image", "single-image"])
def test_single_image_returns_a_base64_jpeg_of_the_target_size(
    worker: FaceSwapWorker, astronaut_uri: str, grace_uri: str, process_type: str
) -> None:
    out = worker.run({"process_type": process_type, "source_file": astronaut_uri, "target_file": grace_uri,
                      "options": {"mouth_mask": True, "use_face_enhancer": True}})
    assert "error" not in out
    assert _jpeg(out["result"]).shape == (600, 512, 3)
    assert not out["result"].startswith("data:")
    assert (out["faces_swapped"], out["width"], out["height"], out["backend"]) == (1, 512, 600, "classic")
    assert out["timings_ms"]["total"] > 0


def test_data_uri_prefix_is_configurable(engine: SwapEngine, astronaut_uri: str, grace_uri: str) -> None:
    prefixed = FaceSwapWorker(WorkerSettings(result_data_uri=True), engine)
    job = {"source_file": astronaut_uri, "target_file": grace_uri}
    assert prefixed.run(job)["result"].startswith("data:image/jpeg;base64,")
    assert not prefixed.run({**job, "options": {"data_uri": False}})["result"].startswith("data:")


def test_detect_faces_lists_boxes_confidence_landmarks_in_order(
    worker: FaceSwapWorker, astronaut: np.ndarray, grace_hopper: np.ndarray
) -> None:
    canvas = np.full((640, 1100, 3), 200, np.uint8)
    canvas[40:640, 560:1072] = grace_hopper
    canvas[0:512, 0:512] = astronaut
    buf = io.BytesIO()
    Image.fromarray(canvas).save(buf, "PNG")
    uri = "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode()
    out = worker.run({"process_type": "detect_faces", "image_file": uri})
    assert out["face_count"] == 2
    first, second = out["faces"]
    assert first["index"] == 0 and first["box"][0] < 512 < second["box"][0]
    for face in out["faces"]:
        assert len(face["box"]) == 4 and 0.5 < face["confidence"] <= 1.0
        assert set(face["landmarks"]) == {"left_eye", "right_eye", "nose", "mouth_left", "mouth_right"}


def test_multi_image_maps_sources_to_faces_in_order(
    worker: FaceSwapWorker, astronaut: np.ndarray, grace_uri: str, astronaut_uri: str
) -> None:
    canvas = np.full((512, 1030, 3), 200, np.uint8)
    canvas[:, :512] = astronaut
    canvas[:, 518:] = astronaut
    buf = io.BytesIO()
    Image.fromarray(canvas).save(buf, "PNG")
    target = "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode()
    out = worker.run({"process_type": "multi_image", "target_file": target, "face_mappings": {"face_1": grace_uri}})
    assert (out["faces_swapped"], out["target_faces"]) == (1, 2)
    image = _jpeg(out["result"])
    face = (slice(80, 170), slice(185, 270))  # the astronaut's face, inside each copy
    left_change = np.abs(image[:, :512][face].astype(int) - canvas[:, :512][face]).mean()
    right_change = np.abs(image[:, 518:][face].astype(int) - canvas[:, 518:][face]).mean()
    assert right_change > 3 * left_change  # only face_1 (the right one) was swapped
    bad = worker.run({"process_type": "multi_image", "target_file": target, "face_mappings": {"face_2": grace_uri}})
    assert bad == {"error": "face_mappings names face_2 but the target image has 2 face(s)"}


@pytest.mark.parametrize(
    ("job", "message"),
    [
        ({"source_file": BLANK, "target_file": "ASTRONAUT"}, "no face found in source image"),
        ({"source_file": "ASTRONAUT", "target_file": BLANK}, "no face found in target image"),
        ({"target_file": "ASTRONAUT"}, "source_file is required"),
        ({"source_file": "ASTRONAUT", "target_file": "data:image/png;base64,aGVsbG8="}, "target_file is not an image"),
        ({"process_type": "swap_video"}, "unknown process_type 'swap_video'"),
        ({"source_file": "ASTRONAUT", "target_file": "ASTRONAUT", "options": {"mouth_mask": "often"}},
         "options.mouth_mask must be a boolean"),
        ({"process_type": "multi_image", "target_file": "ASTRONAUT"}, "face_mappings is required"),
    ],
)
def test_failures_are_returned_as_clear_errors(
    worker: FaceSwapWorker, astronaut_uri: str, job: dict[str, object], message: str
) -> None:
    job = {k: (astronaut_uri if v == "ASTRONAUT" else v) for k, v in job.items()}
    out = worker.run(job)
    assert set(out) == {"error"} and out["error"].startswith(message)


def test_runpod_sdk_marks_error_output_failed_like_the_local_workers(
    monkeypatch: pytest.MonkeyPatch, worker: FaceSwapWorker, astronaut_uri: str, grace_uri: str
) -> None:
    """The SDK's own job runner and the local endpoint's mapping agree on success and on failure."""
    from runpod.serverless.modules.rp_job import run_job

    monkeypatch.setattr(handler_module, "_worker", worker)
    failing = {"id": "j1", "input": {"source_file": BLANK, "target_file": astronaut_uri}}
    sdk = asyncio.run(run_job(handler_module.handler, failing))
    assert sdk == {"error": "no face found in source image"}
    assert to_run_result(handler_module.handler(failing)) == ("FAILED", None, "no face found in source image")

    ok = {"id": "j2", "input": {"source_file": grace_uri, "target_file": astronaut_uri}}
    sdk_ok = asyncio.run(run_job(handler_module.handler, ok))
    status, output, error = to_run_result(handler_module.handler(ok))
    assert status == "COMPLETED" and error is None
    assert set(sdk_ok) == {"output"} and set(sdk_ok["output"]) == set(output)


def test_serverless_entry_point_runs_a_job_with_the_runpod_sdk(grace_uri: str) -> None:
    """``python -m services.faceswap_worker`` (the container's command) serves a job through runpod.serverless.start."""
    import json
    import os
    import subprocess
    import sys

    from tests.worker.conftest import REPO

    job = json.dumps({"input": {"process_type": "detect_faces", "image_file": grace_uri}})  # < 128 KiB: one argv entry
    proc = subprocess.run(
        [sys.executable, "-m", "services.faceswap_worker", "--test_input", job],
        cwd=REPO, capture_output=True, text=True, timeout=120, env={**os.environ, "RUNPOD_LOG_LEVEL": "INFO"},
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "Job local_test completed successfully" in proc.stdout
    assert "'face_count': 1" in proc.stdout
    assert "Retrieved local job" not in proc.stdout  # inputs (faces) are not logged at INFO
