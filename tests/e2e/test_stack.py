"""End to end through the real stack: the gateway, generator, swapper, S3 and the real worker.

The tests share one stack and run in file order; the ones that break a
service (endpoint down, storage stopped) come last.
"""

import contextlib
import io
import json
import os
import queue
import signal
import subprocess
import sys
import threading
import time

import grpc
import numpy as np
import psutil
import pytest
import requests
from PIL import Image

from facegen.v1 import common_pb2, gateway_pb2
from services.common.images import sniff_mime
from services.stack.launcher import REPO_ROOT
from services.stack.samples import write_samples
from tests.waiting import until_sync

pytestmark = pytest.mark.e2e

TERMINAL = gateway_pb2.STAGE_TERMINAL
# Where the astronaut's face is in scikit-image's 512x512 photo (left, top, right,
# bottom): its core (eyes to mouth), and the face with its blend margin.
FACE_CORE = (190, 90, 270, 180)
FACE_BOX = (150, 40, 330, 260)


def _job(face: bytes, **fields) -> gateway_pb2.JobRequest:
    fields.setdefault("prompt", "portrait photo of a woman")
    return gateway_pb2.JobRequest(reference_image=face, **fields)


def _events_until(stream, stop) -> list[gateway_pb2.JobEvent]:
    events = []
    for event in stream:
        events.append(event)
        if stop(event):
            break
    return events


def _terminal(events: list[gateway_pb2.JobEvent]) -> gateway_pb2.JobResult:
    terminals = [e for e in events if e.stage == TERMINAL]
    assert len(terminals) == 1 and events[-1] is terminals[0]
    return terminals[0].result


def _fetch(url: str) -> bytes:
    response = requests.get(url, timeout=30)
    response.raise_for_status()
    return response.content


def _assert_well_ordered(events: list[gateway_pb2.JobEvent]) -> None:
    seqs = [e.seq for e in events]
    assert seqs == list(range(seqs[0], seqs[0] + len(seqs)))
    percents = [e.percent for e in events]
    assert percents == sorted(percents) and percents[-1] == pytest.approx(100.0)


@pytest.mark.parametrize(
    ("change", "needle"),
    [
        ({"reference_image": b"%PDF-1.7 this is not a picture"}, "reference_image"),
        ({"prompt": "x" * 10_000}, "prompt"),
        ({"width": 1000, "height": 1001}, "height"),
    ],
)
def test_bad_inputs_are_rejected_at_the_gateway(gateway, face, change, needle) -> None:
    request = _job(face)
    for key, value in change.items():
        setattr(request, key, value)
    with pytest.raises(grpc.RpcError) as caught:
        list(gateway.Run(request, timeout=30))
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert needle in caught.value.details()


def test_decompression_bomb_is_rejected(gateway) -> None:
    out = io.BytesIO()
    Image.new("1", (10_000, 10_000)).save(out, "PNG")
    with pytest.raises(grpc.RpcError) as caught:
        gateway.Submit(_job(out.getvalue()), timeout=30)
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "pixels" in caught.value.details()


def test_prompt_job_stores_the_image_and_says_why_the_swap_fell_back(gateway, face) -> None:
    events = list(gateway.Run(_job(face, seed=42, steps=6), timeout=120))
    result = _terminal(events)
    _assert_well_ordered(events)
    assert result.state == gateway_pb2.JOB_STATE_COMPLETED, result.message
    steps = [e.denoise.step for e in events if e.HasField("denoise")]
    assert steps == list(range(1, 7))
    (image,) = result.images
    assert image.seed == 42
    assert image.face_swap_method == common_pb2.FACE_SWAP_METHOD_NONE
    assert image.fallback_reason == common_pb2.FALLBACK_REASON_NO_FACE_FOUND
    assert "face" in image.fallback_message
    data = _fetch(image.url)
    assert sniff_mime(data) == image.content_type
    with Image.open(io.BytesIO(data)) as picture:
        assert picture.size == (image.width, image.height)
    assert result.reference_key


def test_template_job_swaps_the_face_and_leaves_the_rest(gateway, face, template) -> None:
    events = list(gateway.Run(_job(face, target_image=template), timeout=120))
    result = _terminal(events)
    assert result.state == gateway_pb2.JOB_STATE_COMPLETED, result.message
    (image,) = result.images
    assert image.face_swap_method == common_pb2.FACE_SWAP_METHOD_EXTERNAL_API, image.fallback_message
    assert any(e.HasField("remote") and e.remote.status == "COMPLETED" for e in events)
    swapped = np.asarray(Image.open(io.BytesIO(_fetch(image.url))).convert("RGB"), dtype=np.int16)
    original = np.asarray(Image.open(io.BytesIO(template)).convert("RGB"), dtype=np.int16)
    assert swapped.shape == original.shape
    diff = np.abs(swapped - original).mean(axis=2)
    left, top, right, bottom = FACE_CORE
    assert diff[top:bottom, left:right].mean() > 15, "the face did not change"
    left, top, right, bottom = FACE_BOX
    outside = np.ones(diff.shape, dtype=bool)
    outside[top:bottom, left:right] = False
    # The worker returns a JPEG, so "unchanged" means within re-encoding noise.
    assert diff[outside].mean() < 3, "pixels outside the face changed"


def test_cli_runs_a_template_job_and_writes_the_image(stack, face, template, tmp_path) -> None:
    (tmp_path / "face.jpg").write_bytes(face)
    (tmp_path / "target.png").write_bytes(template)
    cli = [sys.executable, "-m", "services.cli", "--gateway", stack.addresses.gateway]
    run = subprocess.run([*cli, "--json", "run", "--reference", str(tmp_path / "face.jpg"),
                          "--target", str(tmp_path / "target.png"), "--out", str(tmp_path / "out")],
                         capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, run.stderr  # 0: every image has the face swapped
    events = [json.loads(line) for line in run.stdout.splitlines()]
    assert events[-1]["stage"] == "STAGE_TERMINAL"
    assert events[-1]["result"]["images"][0]["face_swap_method"] == "FACE_SWAP_METHOD_EXTERNAL_API"
    (written,) = (tmp_path / "out").iterdir()
    assert sniff_mime(written.read_bytes()) == "image/jpeg"
    models = subprocess.run([*cli, "models"], capture_output=True, text=True, timeout=60)
    assert models.returncode == 0 and "tiny-sd (default)" in models.stdout


def test_watch_reattaches_and_replays_after_the_client_drops(gateway, face) -> None:
    job_id = gateway.Submit(_job(face, steps=20, seed=1), timeout=30).job_id
    first = gateway.Watch(gateway_pb2.WatchRequest(job_id=job_id))
    seen = _events_until(first, lambda e: e.HasField("denoise"))
    first.cancel()
    rest = list(gateway.Watch(gateway_pb2.WatchRequest(job_id=job_id, after_seq=seen[-1].seq), timeout=120))
    events = seen + rest
    _assert_well_ordered(events)
    assert _terminal(events).state == gateway_pb2.JOB_STATE_COMPLETED
    assert gateway.Get(gateway_pb2.GetRequest(job_id=job_id), timeout=10).state == gateway_pb2.JOB_STATE_COMPLETED


def test_cancel_during_generation_stops_the_generator_and_stores_nothing(gateway, face, bucket, stack) -> None:
    stream = gateway.Run(_job(face, steps=50, width=512, height=512), timeout=120)
    events = _events_until(stream, lambda e: e.HasField("denoise"))
    job_id = events[0].job_id
    gateway.Cancel(gateway_pb2.CancelRequest(job_id=job_id), timeout=10)
    events += list(stream)
    result = _terminal(events)
    assert result.state == gateway_pb2.JOB_STATE_CANCELLED
    last_step = max(e.denoise.step for e in events if e.HasField("denoise"))
    assert last_step < 50
    assert not result.images
    assert not [o.key for o in bucket.objects.all() if job_id in o.key]
    generator_log = (stack.run_dir / "generator.log").read_text()
    assert any(job_id in line and "cancel" in line for line in generator_log.splitlines())


def test_cancel_while_the_remote_job_waits_cancels_it_on_runpod(gateway, face, template, runpod) -> None:
    runpod.faults(hang_rate=1.0)
    try:
        stream = gateway.Run(_job(face, target_image=template), timeout=120)
        events = _events_until(stream, lambda e: e.HasField("remote") and bool(e.remote.remote_job_id))
        remote_id = events[-1].remote.remote_job_id
        gateway.Cancel(gateway_pb2.CancelRequest(job_id=events[0].job_id), timeout=10)
        events += list(stream)
    finally:
        runpod.faults(hang_rate=0.0)
    assert _terminal(events).state == gateway_pb2.JOB_STATE_CANCELLED
    until_sync(lambda: runpod.status(remote_id).get("status") == "CANCELLED", 10, "the RunPod job cancelled",
               every_s=0.1)


def test_doctor_passes_against_the_local_endpoint(stack, tmp_path) -> None:
    env = {**os.environ, **stack.swapper_env(), "S3_MANAGE_LIFECYCLE": "false"}
    reference, target = write_samples(tmp_path)
    doctor = subprocess.run([sys.executable, "-m", "services.swapper", "doctor", "--reference", str(reference),
                             "--target", str(target)], env=env, capture_output=True, text=True, timeout=120)
    assert doctor.returncode == 0, doctor.stdout + doctor.stderr
    assert "PASS swap: external_api" in doctor.stdout
    assert stack.api_key not in doctor.stdout + doctor.stderr  # the key is shown masked only


def test_the_cli_doctor_swaps_the_stack_samples_by_default(stack) -> None:
    env = {**os.environ, **stack.swapper_env(), "S3_MANAGE_LIFECYCLE": "false"}
    doctor = subprocess.run([sys.executable, "-m", "services.cli", "doctor"], env=env, capture_output=True,
                            text=True, timeout=120)
    assert doctor.returncode == 0, doctor.stdout + doctor.stderr
    assert "PASS swap: external_api" in doctor.stdout


def test_endpoint_down_falls_back_with_the_reason(gateway, face, template, stack) -> None:
    stack.services["runpod"].stop()
    try:
        events = list(gateway.Run(_job(face, target_image=template), timeout=120))
    finally:
        stack.restart("runpod")
    result = _terminal(events)
    assert result.state == gateway_pb2.JOB_STATE_COMPLETED, result.message
    (image,) = result.images
    assert image.face_swap_method == common_pb2.FACE_SWAP_METHOD_NONE
    assert image.fallback_reason == common_pb2.FALLBACK_REASON_ENDPOINT_UNAVAILABLE
    assert _fetch(image.url)


def test_storage_stopped_mid_job_is_a_clear_failure_without_urls(gateway, face, stack) -> None:
    stream = gateway.Run(_job(face, steps=50, width=512, height=512), timeout=120)
    events = _events_until(stream, lambda e: e.HasField("denoise"))
    stack.services["s3"].stop()
    events += list(stream)
    result = _terminal(events)
    assert result.state == gateway_pb2.JOB_STATE_FAILED
    assert result.code == "UNAVAILABLE"
    assert "cannot store an image" in result.message
    assert not result.images
    assert all(not e.HasField("image") or not e.image.url for e in events)


def test_stopping_the_stack_leaves_no_process_behind(stack) -> None:
    groups = [s.process.pid for s in stack.services.values() if s.process is not None]
    stack.stop()
    leftovers = [p for p in psutil.process_iter(["pid"]) if _pgid(p.pid) in groups]
    assert not leftovers


@pytest.mark.timeout(400)
@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM, signal.SIGHUP], ids=lambda s: s.name)
def test_stack_up_stops_everything_on_each_signal(sig: signal.Signals, tmp_path) -> None:
    # Runs after the shared stack was stopped above, so that two stacks never compete for the cores.
    up = subprocess.Popen([sys.executable, "-m", "services.stack", "up", "--run-dir", str(tmp_path / "run")],
                          cwd=REPO_ROOT, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    started: list[psutil.Process] = []
    try:
        _wait_for_line(up, "stops everything", within_s=360)
        started = psutil.Process(up.pid).children(recursive=True)
        groups = {p.pid for p in psutil.Process(up.pid).children()}
        assert len(groups) == 5, "one process group per service"
        up.send_signal(sig)
        code = up.wait(60)
        _, alive = psutil.wait_procs(started, timeout=10)
        assert not alive, f"left running after {sig.name}: {[p.pid for p in alive]}"
        assert not [p for p in psutil.process_iter(["pid"]) if _pgid(p.pid) in groups]
        assert code == 0
    finally:  # whatever the outcome, leave nothing running for the next test
        if up.poll() is None:
            up.kill()
        for process in started:
            with contextlib.suppress(psutil.Error):
                process.kill()
        up.wait()


def _wait_for_line(process: subprocess.Popen[str], needle: str, within_s: float) -> None:
    """Reads ``process``'s stdout until a line contains ``needle``; fails if it exits or the time runs out."""
    lines: queue.Queue[str | None] = queue.Queue()

    def read() -> None:
        assert process.stdout is not None
        for line in process.stdout:
            lines.put(line)
        lines.put(None)

    threading.Thread(target=read, daemon=True).start()
    deadline = time.monotonic() + within_s
    while True:
        line = lines.get(timeout=max(0.0, deadline - time.monotonic()))
        assert line is not None, f"the stack exited with {process.wait()} before printing {needle!r}"
        if needle in line:
            return


def _pgid(pid: int) -> int | None:
    try:
        return os.getpgid(pid)
    except ProcessLookupError:
        return None
