"""The facegen CLI: request building, rendering and exit codes."""

import io
import json
from pathlib import Path

import pytest

from facegen.v1 import common_pb2, gateway_pb2
from services.cli import main as cli
from services.cli.progress import ProgressView, describe_result, event_json

pytestmark = pytest.mark.unit


def _args(tmp_path: Path, *extra: str):
    face = tmp_path / "face.jpg"
    face.write_bytes(b"\xff\xd8\xff fake jpeg")
    return cli._parser().parse_args(["run", "--prompt", "a cat", "--reference", str(face), *extra])


def test_build_request_maps_every_option(tmp_path: Path) -> None:
    target = tmp_path / "t.png"
    target.write_bytes(b"\x89PNG...")
    args = _args(tmp_path, "--seed", "7", "--guidance", "4.5", "--images", "3", "--lora", "style:0.6",
                 "--target", str(target), "--mouth-mask", "--width", "512", "--height", "768")
    request = cli.build_request(args)
    assert request.prompt == "a cat" and request.seed == 7 and request.guidance_scale == 4.5
    assert (request.width, request.height, request.num_images) == (512, 768, 3)
    assert request.lora.name == "style" and request.lora.weight == pytest.approx(0.6)
    assert request.reference_image.startswith(b"\xff\xd8\xff")
    assert request.target_image == b"\x89PNG..."
    assert request.swap_options.mouth_mask and not request.swap_options.use_face_enhancer


def test_unset_seed_and_guidance_stay_unset(tmp_path: Path) -> None:
    request = cli.build_request(_args(tmp_path))
    assert not request.HasField("seed") and not request.HasField("guidance_scale")


def _image(index: int, method: int, reason: int = 0) -> gateway_pb2.ImageResult:
    return gateway_pb2.ImageResult(index=index, url=f"http://x/{index}", face_swap_method=method,
                                   fallback_reason=reason, fallback_message="no face in target", seed=42,
                                   width=64, height=64)


@pytest.mark.parametrize(
    ("result", "code"),
    [
        (gateway_pb2.JobResult(state=gateway_pb2.JOB_STATE_COMPLETED,
                               images=[_image(0, common_pb2.FACE_SWAP_METHOD_EXTERNAL_API)]), cli.EXIT_OK),
        (gateway_pb2.JobResult(state=gateway_pb2.JOB_STATE_COMPLETED,
                               images=[_image(0, common_pb2.FACE_SWAP_METHOD_EXTERNAL_API),
                                       _image(1, common_pb2.FACE_SWAP_METHOD_NONE)]), cli.EXIT_FALLBACK),
        (gateway_pb2.JobResult(state=gateway_pb2.JOB_STATE_COMPLETED,
                               images=[_image(0, common_pb2.FACE_SWAP_METHOD_LOCAL)],
                               failures=[gateway_pb2.ImageFailure(index=1, code="UNAVAILABLE")]), cli.EXIT_FALLBACK),
        (gateway_pb2.JobResult(state=gateway_pb2.JOB_STATE_FAILED), cli.EXIT_FAILED),
        (gateway_pb2.JobResult(state=gateway_pb2.JOB_STATE_CANCELLED), cli.EXIT_CANCELLED),
    ],
)
def test_exit_codes_tell_outcomes_apart(result: gateway_pb2.JobResult, code: int) -> None:
    assert cli.outcome_code(result) == code


def test_result_lines_say_why_a_swap_fell_back() -> None:
    result = gateway_pb2.JobResult(images=[_image(0, common_pb2.FACE_SWAP_METHOD_NONE,
                                                  common_pb2.FALLBACK_REASON_NO_FACE_FOUND)],
                                   failures=[gateway_pb2.ImageFailure(index=1, code="UNAVAILABLE",
                                                                      message="storage is unavailable")])
    lines = describe_result(result)
    assert "no face swap (no_face_found): no face in target" in lines[0]
    assert "http://x/0" in lines[0]
    assert lines[1] == "image 1 FAILED (UNAVAILABLE): storage is unavailable"


def test_result_lines_show_the_identity_distance_when_it_was_measured() -> None:
    swapped = _image(0, common_pb2.FACE_SWAP_METHOD_EXTERNAL_API)
    swapped.identity_distance = 0.375
    refused = _image(1, common_pb2.FACE_SWAP_METHOD_NONE, common_pb2.FALLBACK_REASON_SWAP_NOT_LIKE_REFERENCE)
    refused.identity_distance = 0.71
    unmeasured = _image(2, common_pb2.FACE_SWAP_METHOD_NONE, common_pb2.FALLBACK_REASON_SWAP_UNCHANGED)
    lines = describe_result(gateway_pb2.JobResult(images=[swapped, refused, unmeasured]))
    assert "face swap: external_api (identity distance 0.38; under 0.6 is the same person)" in lines[0]
    assert "no face swap (swap_not_like_reference)" in lines[1] and "identity distance 0.71" in lines[1]
    assert "no face swap (swap_unchanged)" in lines[2] and "identity distance" not in lines[2]


def _step(step: int, total: int = 8) -> gateway_pb2.JobEvent:
    return gateway_pb2.JobEvent(stage=gateway_pb2.STAGE_GENERATING, percent=step * 5.0,
                                denoise=gateway_pb2.DenoiseProgress(step=step, total_steps=total))


def test_plain_output_prints_only_meaningful_changes() -> None:
    out = io.StringIO()
    view = ProgressView(out, tty=False)
    for step in range(1, 9):
        view.show(_step(step))
    view.show(gateway_pb2.JobEvent(stage=gateway_pb2.STAGE_SWAPPING, percent=75, image_index=0,
                                   remote=common_pb2.RemoteJobStatus(status="IN_QUEUE")))
    view.show(gateway_pb2.JobEvent(stage=gateway_pb2.STAGE_SWAPPING, percent=76, image_index=0,
                                   remote=common_pb2.RemoteJobStatus(status="IN_QUEUE")))
    lines = out.getvalue().splitlines()
    assert [line.split("step ")[1].split()[0] for line in lines[:-1]] == ["1/8", "2/8", "4/8", "6/8", "8/8"]
    assert "runpod IN_QUEUE" in lines[-1]


def test_terminal_output_redraws_one_line() -> None:
    out = io.StringIO()
    view = ProgressView(out, tty=True)
    view.show(_step(1))
    view.show(_step(2))
    view.close()
    text = out.getvalue()
    assert text.count("\r\x1b[2K") == 2 and text.endswith("\n") and text.count("\n") == 1


def test_json_lines_leave_previews_out() -> None:
    event = _step(3)
    event.denoise.preview_png = b"\x89PNG" * 100
    decoded = json.loads(event_json(event))
    assert decoded["denoise"] == {"step": 3, "total_steps": 8}
    assert decoded["stage"] == "STAGE_GENERATING"


def test_the_result_names_the_jobs_trace_when_it_has_one(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    args = _args(tmp_path, "--no-download")
    for trace_id, expected in (("4bf92f3577b34da6a3ce929d0e0e4736", ["trace 4bf92f3577b34da6a3ce929d0e0e4736"]),
                               ("", [])):
        result = gateway_pb2.JobResult(state=gateway_pb2.JOB_STATE_COMPLETED, trace_id=trace_id)
        cli.finish(gateway_pb2.JobEvent(job_id="j1", result=result), args)
        lines = capsys.readouterr().out.splitlines()
        assert lines[0] == "job j1: COMPLETED"
        assert [line for line in lines if line.startswith("trace ")] == expected
