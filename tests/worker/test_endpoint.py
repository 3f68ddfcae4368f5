"""The RunPod emulator with the real handler in worker processes: results, failures, timeouts, cancels, crashes.

The queue API itself (limits, retention, faults, long-polls) is tested with scripted jobs in
tests/integration/stack/test_runpod_emulator.py.
"""

from __future__ import annotations

import base64
import io
import os
import re
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
from PIL import Image

from tests.worker.conftest import RunningEndpoint, start_endpoint

pytestmark = pytest.mark.integration


def _tiny_png() -> str:
    buf = io.BytesIO()
    Image.new("RGB", (64, 48), (10, 120, 200)).save(buf, "PNG")
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode()


TINY = {"target_file": _tiny_png(), "source_file": _tiny_png()}


class _Stall(BaseHTTPRequestHandler):
    """Answers with headers, then never sends the body (until released)."""

    release = threading.Event()

    def log_message(self, format: str, *args: object) -> None:
        pass

    def do_GET(self) -> None:
        self.send_response(200)
        self.send_header("Content-Length", "100000")
        self.end_headers()
        self.wfile.flush()
        _Stall.release.wait(30)


@pytest.fixture(scope="module")
def stall_url() -> Iterator[str]:
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Stall)
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_address[1]}/slow.png"
    _Stall.release.set()
    server.shutdown()
    server.server_close()


# -- the real handler in worker processes --------------------------------------------------------
def test_run_then_status_reports_completed_with_times_and_output(
    real_endpoint: RunningEndpoint, astronaut_uri: str, grace_uri: str
) -> None:
    resp = real_endpoint.post("run", {"input": {"source_file": grace_uri, "target_file": astronaut_uri}})
    assert resp.status_code == 200
    submitted = resp.json()
    assert set(submitted) == {"id", "status"} and submitted["status"] in ("IN_QUEUE", "IN_PROGRESS")
    body = real_endpoint.wait_status(submitted["id"], {"COMPLETED", "FAILED"})
    assert body["status"] == "COMPLETED", body
    assert isinstance(body["delayTime"], int) and isinstance(body["executionTime"], int)
    assert body["executionTime"] > 0 and body["workerId"].startswith("local-worker-")
    image = Image.open(io.BytesIO(base64.b64decode(body["output"]["result"])))
    assert image.format == "JPEG" and image.size == (512, 512)
    assert real_endpoint.get(f"status/{submitted['id']}").json() == body  # stable once finished


def test_handler_failure_is_reported_as_failed_with_the_message(
    real_endpoint: RunningEndpoint, astronaut_uri: str
) -> None:
    job = {"input": {"source_file": _tiny_png(), "target_file": astronaut_uri}}
    resp = real_endpoint.post("runsync?wait=30000", job)
    body = resp.json()
    assert body["status"] == "FAILED" and body["error"] == "no face found in source image"
    assert "output" not in body


def test_runsync_returns_the_output_when_done_in_time(
    real_endpoint: RunningEndpoint, astronaut_uri: str, grace_uri: str
) -> None:
    body = real_endpoint.post(
        "runsync?wait=30000",
        {"input": {"process_type": "detect_faces", "image_file": grace_uri}},
    ).json()
    assert body["status"] == "COMPLETED" and body["output"]["face_count"] == 1


def test_execution_timeout_ends_a_running_job_and_the_worker_recovers(
    real_endpoint: RunningEndpoint, stall_url: str, astronaut_uri: str, grace_uri: str
) -> None:
    slow = {"input": {"source_file": stall_url, "target_file": astronaut_uri}, "policy": {"executionTimeout": 800}}
    job = real_endpoint.post("run", slow).json()
    body = real_endpoint.wait_status(job["id"], {"TIMED_OUT", "COMPLETED", "FAILED"})
    assert body["status"] == "TIMED_OUT" and "execution timeout of 800 ms" in body["error"]
    assert body["executionTime"] >= 800
    real_endpoint.wait_line(rf"worker\.restart .*id={job['id']}")
    # The worker that was killed comes back and the endpoint still completes jobs.
    for _ in range(2):
        swap = {"input": {"source_file": grace_uri, "target_file": astronaut_uri}}
        ok = real_endpoint.post("runsync?wait=60000", swap)
        assert ok.json()["status"] == "COMPLETED"


def test_cancel_of_a_running_job(real_endpoint: RunningEndpoint, stall_url: str, astronaut_uri: str) -> None:
    job = real_endpoint.post("run", {"input": {"source_file": stall_url, "target_file": astronaut_uri}}).json()
    real_endpoint.wait_status(job["id"], {"IN_PROGRESS"})
    assert real_endpoint.post(f"cancel/{job['id']}").json() == {"id": job["id"], "status": "CANCELLED"}
    assert real_endpoint.get(f"status/{job['id']}").json()["status"] == "CANCELLED"
    real_endpoint.wait_line(rf"worker\.restart .*id={job['id']}")


def test_a_worker_process_that_dies_fails_its_job_and_is_replaced(
    real_endpoint: RunningEndpoint, astronaut_uri: str, grace_uri: str
) -> None:
    swap = {"input": {"source_file": grace_uri, "target_file": astronaut_uri}}
    real_endpoint.admin({"crash_rate": 1.0})
    try:
        body = real_endpoint.post("runsync?wait=30000", swap).json()
    finally:
        real_endpoint.admin()
    assert body["status"] == "FAILED" and body["error"] == "worker process exited unexpectedly (code -9)"
    real_endpoint.wait_line(rf"worker\.crashed .*id={body['id']}")
    for _ in range(2):  # both workers serve again, the replaced one included
        assert real_endpoint.post("runsync?wait=60000", swap).json()["status"] == "COMPLETED"


def test_health_counts_workers_and_jobs(real_endpoint: RunningEndpoint) -> None:
    body = real_endpoint.get("health").json()
    assert set(body["jobs"]) == {"completed", "failed", "inProgress", "inQueue", "retried"}
    assert set(body["workers"]) == {"idle", "initializing", "ready", "running", "throttled", "unhealthy"}
    assert body["workers"]["idle"] + body["workers"]["running"] + body["workers"]["initializing"] == 2


def test_sigterm_stops_the_server_and_its_worker_processes() -> None:
    ep = start_endpoint(workers=1)  # and one spare
    ep.wait_line(r"worker\.ready worker=spare-")
    pids = [int(p) for p in re.findall(r"worker\.ready .*pid=(\d+)", "\n".join(ep.lines))]
    assert len(pids) == 2 and all(os.path.exists(f"/proc/{p}") for p in pids)
    assert ep.stop() == 0
    deadline = time.monotonic() + 5
    while any(os.path.exists(f"/proc/{p}") for p in pids) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not any(os.path.exists(f"/proc/{p}") for p in pids)
    assert any("endpoint.stopped" in line for line in ep.lines)


def test_the_job_after_a_cancel_of_a_running_one_does_not_wait_for_a_warm_up(
    stall_url: str, astronaut_uri: str, grace_uri: str
) -> None:
    """Issue 11.15: the process ended by the cancel is replaced at once by a warm spare."""
    ep = start_endpoint(workers=1)
    try:
        ep.wait_line(r"worker\.ready worker=spare-")
        stuck = ep.post("run", {"input": {"source_file": stall_url, "target_file": astronaut_uri}}).json()
        ep.wait_status(stuck["id"], {"IN_PROGRESS"})
        assert ep.post(f"cancel/{stuck['id']}").json()["status"] == "CANCELLED"
        ep.wait_line(rf"worker\.restart .*id={stuck['id']}")
        swap = {"input": {"source_file": grace_uri, "target_file": astronaut_uri}}
        body = ep.post("runsync?wait=60000", swap).json()
        assert body["status"] == "COMPLETED", body
        # A fresh worker process takes 1.4 s (idle machine, warm file cache) to ~9 s (busy) to warm up;
        # a spare took ~20 ms here.
        assert body["delayTime"] < 400, f"the next job waited {body['delayTime']} ms in the queue"
    finally:
        ep.stop()


def test_unchanged_fault_returns_the_target_as_it_came_and_reports_success(
    real_endpoint: RunningEndpoint, astronaut_uri: str, grace_uri: str
) -> None:
    real_endpoint.admin({"unchanged_rate": 1.0})
    try:
        body = real_endpoint.post("runsync?wait=60000", {"input": {"source_file": grace_uri,
                                                                  "target_file": astronaut_uri}}).json()
    finally:
        real_endpoint.admin()
    assert body["status"] == "COMPLETED" and body["output"]["faces_swapped"] == 1
    sent = base64.b64decode(astronaut_uri.split(",", 1)[1])
    assert base64.b64decode(body["output"]["result"]) == sent
