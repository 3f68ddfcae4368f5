"""The local RunPod queue API: statuses, auth, timeouts, limits, retention, faults, shutdown."""

from __future__ import annotations

import base64
import io
import os
import re
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
import requests
from PIL import Image

from tests.worker.conftest import RunningEndpoint, start_endpoint

pytestmark = pytest.mark.integration
endpoint_args = pytest.mark.endpoint_args


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


def test_auth_routes_and_unknown_jobs(real_endpoint: RunningEndpoint) -> None:
    url = f"{real_endpoint.base}/run"
    assert requests.post(url, json={"input": TINY}, timeout=10).status_code == 401
    wrong = {"Authorization": "Bearer nope"}
    assert requests.post(url, json={"input": TINY}, headers=wrong, timeout=10).status_code == 401
    other = f"http://127.0.0.1:{real_endpoint.port}/v2/another-endpoint/health"
    assert requests.get(other, headers=real_endpoint.headers, timeout=10).status_code == 404
    assert real_endpoint.get("status/no-such-job").status_code == 404
    assert real_endpoint.post("cancel/no-such-job").status_code == 404
    assert real_endpoint.post("run", {"no_input": 1}).status_code == 400
    assert real_endpoint.post("run", {"input": TINY, "policy": {"ttl": -5}}).status_code == 400
    assert real_endpoint.get("run").status_code == 405


def test_payload_over_the_run_limit_is_refused(real_endpoint: RunningEndpoint) -> None:
    big = {"input": {"target_file": "A" * (10 * 1024 * 1024 + 10)}}
    resp = real_endpoint.post("run", big)
    assert resp.status_code == 413 and "payload too large" in resp.json()["error"]


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
    ep = start_endpoint(workers=1)
    pids = [int(p) for p in re.findall(r"worker\.ready .*pid=(\d+)", "\n".join(ep.lines))]
    assert len(pids) == 1 and all(os.path.exists(f"/proc/{p}") for p in pids)
    assert ep.stop() == 0
    deadline = time.monotonic() + 5
    while any(os.path.exists(f"/proc/{p}") for p in pids) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not any(os.path.exists(f"/proc/{p}") for p in pids)
    assert any("endpoint.stopped" in line for line in ep.lines)


# -- the queue's state machine, with simulated workers -----------------------------------------
@endpoint_args("--simulate-ms", "20000", "--max-queue", "2", workers=1)
def test_queue_limit_answers_429_and_purge_empties_the_queue(sim_endpoint: RunningEndpoint) -> None:
    first = sim_endpoint.post("run", {"input": TINY}).json()
    sim_endpoint.wait_status(first["id"], {"IN_PROGRESS"})
    queued = [sim_endpoint.post("run", {"input": TINY}).json()["id"] for _ in range(2)]
    refused = sim_endpoint.post("run", {"input": TINY})
    assert refused.status_code == 429 and "queue is full" in refused.json()["error"]
    health = sim_endpoint.get("health").json()
    assert health["jobs"]["inQueue"] == 2 and health["jobs"]["inProgress"] == 1
    assert health["workers"]["running"] == 1
    assert sim_endpoint.post("purge-queue").json() == {"removed": 2, "status": "completed"}
    assert all(sim_endpoint.get(f"status/{j}").status_code == 404 for j in queued)
    assert sim_endpoint.post(f"cancel/{first['id']}").json()["status"] == "CANCELLED"


@endpoint_args("--simulate-ms", "20000", workers=1)
def test_ttl_expires_a_job_waiting_in_the_queue(sim_endpoint: RunningEndpoint) -> None:
    busy = sim_endpoint.post("run", {"input": TINY}).json()
    sim_endpoint.wait_status(busy["id"], {"IN_PROGRESS"})
    job = sim_endpoint.post("run", {"input": TINY, "policy": {"ttl": 400}}).json()
    body = sim_endpoint.wait_status(job["id"], {"TIMED_OUT"}, timeout=10)
    assert "ttl of 400 ms" in body["error"] and "executionTime" not in body
    assert sim_endpoint.post(f"cancel/{job['id']}").json()["status"] == "TIMED_OUT"  # finished jobs stay finished


@endpoint_args("--simulate-ms", "50", "--retention-s", "1", "--runsync-retention-s", "1")
def test_results_are_kept_for_the_retention_period_then_404(sim_endpoint: RunningEndpoint) -> None:
    body = sim_endpoint.post("runsync?wait=10000", {"input": TINY}).json()
    assert body["status"] == "COMPLETED"
    image = Image.open(io.BytesIO(base64.b64decode(body["output"]["result"])))
    assert image.size == (64, 48)  # simulated workers echo the target image
    assert sim_endpoint.get(f"status/{body['id']}").status_code == 200
    deadline = time.monotonic() + 10
    while sim_endpoint.get(f"status/{body['id']}").status_code == 200:
        assert time.monotonic() < deadline, "result never expired"
        time.sleep(0.1)
    assert sim_endpoint.get(f"status/{body['id']}").status_code == 404


@endpoint_args("--simulate-ms", "100")
def test_injected_failure_then_retry_completes(sim_endpoint: RunningEndpoint) -> None:
    sim_endpoint.admin({"failure_rate": 1.0})
    failed = sim_endpoint.post("runsync?wait=10000", {"input": TINY}).json()
    assert failed["status"] == "FAILED" and "injected failure" in failed["error"]
    assert sim_endpoint.post(f"retry/{failed['id']}").status_code == 200  # retried jobs are not fated to fail
    assert sim_endpoint.admin() == sim_endpoint.admin()  # DELETE clears, idempotently
    done = sim_endpoint.wait_status(failed["id"], {"COMPLETED", "FAILED"})
    assert done["status"] == "COMPLETED"
    assert sim_endpoint.get("health").json()["jobs"]["retried"] == 1
    assert sim_endpoint.post(f"retry/{failed['id']}").status_code == 400  # only FAILED/TIMED_OUT


@endpoint_args("--simulate-ms", "100")
def test_error_bursts_malformed_bodies_and_latency(sim_endpoint: RunningEndpoint) -> None:
    job = sim_endpoint.post("run", {"input": TINY}).json()
    state = sim_endpoint.admin({"error_burst": 2, "error_status": 429, "routes": ["status"]})
    assert state["error_burst"] == 2 and state["routes"] == ["status"]
    assert [sim_endpoint.get(f"status/{job['id']}").status_code for _ in range(3)] == [429, 429, 200]
    assert sim_endpoint.get("health").status_code == 200  # other routes were not affected
    sim_endpoint.admin({"error_burst": 1, "error_status": 503, "routes": []})
    assert sim_endpoint.get("health").status_code == 503
    sim_endpoint.admin({"malformed_burst": 1})
    bad = sim_endpoint.get(f"status/{job['id']}")
    assert bad.status_code == 200
    with pytest.raises(ValueError):
        bad.json()
    sim_endpoint.admin({"latency_ms": 300})
    started = time.monotonic()
    assert sim_endpoint.get("health").status_code == 200
    assert time.monotonic() - started >= 0.3
    refused = requests.post(f"http://127.0.0.1:{sim_endpoint.port}/admin/faults", json={"nonsense": 1},
                            headers=sim_endpoint.headers, timeout=10)
    assert refused.status_code == 400 and "unknown fault settings: nonsense" in refused.json()["error"]


@endpoint_args("--simulate-ms", "50", "--hang-rate", "1.0")
def test_hanging_jobs_never_finish_until_their_execution_timeout(sim_endpoint: RunningEndpoint) -> None:
    job = sim_endpoint.post("run", {"input": TINY, "policy": {"executionTimeout": 700}}).json()
    assert sim_endpoint.wait_status(job["id"], {"IN_PROGRESS"})["status"] == "IN_PROGRESS"
    body = sim_endpoint.wait_status(job["id"], {"TIMED_OUT", "COMPLETED"}, timeout=10)
    assert body["status"] == "TIMED_OUT" and body["executionTime"] >= 700


@endpoint_args("--simulate-ms", "1500", workers=1)
def test_status_long_poll_returns_on_change(sim_endpoint: RunningEndpoint) -> None:
    job = sim_endpoint.post("run", {"input": TINY}).json()
    sim_endpoint.wait_status(job["id"], {"IN_PROGRESS"})
    started = time.monotonic()
    assert sim_endpoint.get(f"status/{job['id']}?wait=300").json()["status"] == "IN_PROGRESS"
    assert 0.25 <= time.monotonic() - started < 1.2  # nothing changed: held for the wait
    body = sim_endpoint.get(f"status/{job['id']}?wait=10000").json()
    assert body["status"] == "COMPLETED" and time.monotonic() - started < 5


@endpoint_args("--simulate-ms", "1000", workers=200)
def test_many_concurrent_clients(sim_endpoint: RunningEndpoint) -> None:
    def one(_: int) -> str:
        with requests.Session() as session:
            job = session.post(f"{sim_endpoint.base}/run", json={"input": TINY}, headers=sim_endpoint.headers,
                               timeout=30).json()
            while True:
                body = session.get(f"{sim_endpoint.base}/status/{job['id']}?wait=5000",
                                   headers=sim_endpoint.headers, timeout=30).json()
                if body["status"] not in ("IN_QUEUE", "IN_PROGRESS"):
                    return str(body["status"])

    started = time.monotonic()
    with ThreadPoolExecutor(200) as pool:
        results = list(pool.map(one, range(200)))
    assert results == ["COMPLETED"] * 200
    assert time.monotonic() - started < 8  # 200 one-second jobs on 200 workers run side by side
