"""End to end: an endpoint that returns the target unchanged and calls it a success.

The real stack (gateway, generator, swapper, S3, the local RunPod endpoint with the real worker)
with the endpoint's ``unchanged_rate`` fault at 1.0: every job completes on RunPod with the target
as it came. The swapper's unchanged check turns that into a fallback the caller can read, instead
of an image reported as swapped. (This file sorts before test_stack.py, whose last tests stop the
shared stack.)
"""

import json
import subprocess
import sys

import pytest
import requests

from facegen.v1 import common_pb2, gateway_pb2

pytestmark = pytest.mark.e2e


def _template_job(face: bytes, template: bytes) -> gateway_pb2.JobRequest:
    return gateway_pb2.JobRequest(prompt="portrait photo of a woman", reference_image=face, target_image=template)


@pytest.fixture
def unchanged_endpoint(runpod):
    runpod.faults(unchanged_rate=1.0)
    yield runpod
    runpod.faults(unchanged_rate=0.0)


def test_a_target_returned_unchanged_falls_back_with_the_reason(gateway, face, template,
                                                                unchanged_endpoint) -> None:
    events = list(gateway.Run(_template_job(face, template), timeout=120))
    terminal = events[-1]
    assert terminal.stage == gateway_pb2.STAGE_TERMINAL
    result = terminal.result
    assert result.state == gateway_pb2.JOB_STATE_COMPLETED, result.message
    (image,) = result.images
    # RunPod said COMPLETED; the swapper saw that nothing was swapped.
    remote = [e.remote.remote_job_id for e in events if e.HasField("remote") and e.remote.status == "COMPLETED"]
    assert remote
    assert unchanged_endpoint.status(remote[-1])["status"] == "COMPLETED"
    assert image.face_swap_method == common_pb2.FACE_SWAP_METHOD_NONE
    assert image.fallback_reason == common_pb2.FALLBACK_REASON_SWAP_UNCHANGED
    assert "reported success" in image.fallback_message and "unchanged" in image.fallback_message
    assert not image.HasField("identity_distance")
    assert any("without face swap (swap_unchanged:" in e.message for e in events)
    delivered = requests.get(image.url, timeout=30)
    delivered.raise_for_status()
    assert delivered.content == template  # the original, stored as it was sent


def test_the_cli_says_why_and_exits_3(stack, face, template, unchanged_endpoint, tmp_path) -> None:
    (tmp_path / "face.jpg").write_bytes(face)
    (tmp_path / "target.png").write_bytes(template)
    cli = [sys.executable, "-m", "services.cli", "--gateway", stack.addresses.gateway]
    run = subprocess.run([*cli, "--json", "run", "--reference", str(tmp_path / "face.jpg"),
                          "--target", str(tmp_path / "target.png")], capture_output=True, text=True, timeout=120)
    assert run.returncode == 3, run.stderr  # 3: completed, at least one image fell back
    final = json.loads(run.stdout.splitlines()[-1])
    (image,) = final["result"]["images"]
    assert image["fallback_reason"] == "FALLBACK_REASON_SWAP_UNCHANGED"
    plain = subprocess.run([*cli, "run", "--reference", str(tmp_path / "face.jpg"),
                            "--target", str(tmp_path / "target.png")], capture_output=True, text=True, timeout=120)
    assert plain.returncode == 3
    assert "no face swap (swap_unchanged)" in plain.stdout + plain.stderr
