"""The RunPod emulator's queue API with scripted jobs: statuses, auth, limits, timeouts, faults, control API."""

from __future__ import annotations

import base64
import io
import os
import re
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pytest
import requests
from PIL import Image
from prometheus_client.parser import text_string_to_metric_families

from services.stack.runpod_emulator import Fault, JobPlan, Limits, RunPodEmulator, png_bytes
from tests.waiting import until_sync

pytestmark = pytest.mark.integration

KEY = "rpa_TESTKEY_0123456789abcdef"
REPO = __file__.rsplit("/tests/", 1)[0]


class Client:
    """Calls one endpoint of an emulator the way a RunPod client does."""

    def __init__(self, emulator: RunPodEmulator, endpoint_id: str = "ep") -> None:
        self.emulator = emulator
        self.base = f"{emulator.base_url}/{endpoint_id}"
        self.root = emulator.base_url.removesuffix("/v2")
        self.headers = {"Authorization": f"Bearer {KEY}"}
        self.session = requests.Session()

    def post(self, path: str, json: Any = None, **kw: Any) -> requests.Response:
        return self.session.post(f"{self.base}/{path}", json=json, headers=self.headers, timeout=30, **kw)

    def get(self, path: str) -> requests.Response:
        return self.session.get(f"{self.base}/{path}", headers=self.headers, timeout=30)

    def admin(self, method: str, path: str, json: Any = None) -> requests.Response:
        return self.session.request(method, f"{self.root}/admin/{path}", json=json, headers=self.headers, timeout=10)

    def wait_status(self, job_id: str, statuses: set[str], timeout: float = 10) -> dict[str, Any]:
        """Looks, then long-polls, until the job reaches one of ``statuses``."""

        def reached() -> dict[str, Any] | None:
            for query in ("", "?wait=1000"):
                body: dict[str, Any] = self.get(f"status/{job_id}{query}").json()
                if body["status"] in statuses:
                    return body
            return None

        return until_sync(reached, timeout, f"job {job_id} reaching {statuses}", every_s=0)


def files(emulator: RunPodEmulator) -> dict[str, str]:
    """A job input whose images the emulator itself serves."""
    source = emulator.add_file(png_bytes((24, 24), (250, 10, 10)))
    target = emulator.add_file(png_bytes((40, 30), (10, 120, 200)))
    return {"source_file": source, "target_file": target}


FAST = Limits(min_execution_timeout_s=0.1, min_ttl_s=0.1)  # RunPod's 5 s and 10 s minimums, lowered for tests


@pytest.fixture
def emulator() -> Iterator[RunPodEmulator]:
    emulator = RunPodEmulator(api_key=KEY).start()
    emulator.endpoint("ep", limits=FAST)
    yield emulator
    emulator.stop()


@pytest.fixture
def client(emulator: RunPodEmulator) -> Client:
    return Client(emulator)


def decoded(output: dict[str, Any]) -> Image.Image:
    return Image.open(io.BytesIO(base64.b64decode(output["result"])))


def test_a_job_queues_runs_and_returns_the_inverted_target(emulator: RunPodEmulator, client: Client) -> None:
    emulator.endpoint("ep").plan = JobPlan(queue_s=0.2, run_s=0.3)
    submitted = client.post("run", {"input": files(emulator)}).json()
    assert submitted["status"] == "IN_QUEUE" and set(submitted) == {"id", "status"}
    running = client.wait_status(submitted["id"], {"IN_PROGRESS"})
    assert running["delayTime"] >= 200 and "output" not in running
    done = client.wait_status(submitted["id"], {"COMPLETED"})
    assert done["executionTime"] >= 300
    image = decoded(done["output"])
    assert image.size == (40, 30) and image.getpixel((0, 0)) == (245, 135, 55)  # inverted (10, 120, 200)
    job = emulator.job(submitted["id"])
    assert job.inputs is not None and job.inputs.done() and job.finished_at is not None
    assert emulator.count("files") == 2 and emulator.count("run", endpoint="ep") == 1
    assert emulator.count("status", job_id=submitted["id"]) >= 2


def scrape(emulator: RunPodEmulator) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """``GET /metrics``, as {(sample name, labels): value}."""
    response = requests.get(emulator.base_url.removesuffix("/v2") + "/metrics", timeout=5)
    assert response.status_code == 200, response.text
    return {(sample.name, tuple(sorted(sample.labels.items()))): sample.value
            for family in text_string_to_metric_families(response.text) for sample in family.samples}


def test_metrics_count_jobs_by_status_and_the_queue(emulator: RunPodEmulator, client: Client) -> None:
    emulator.endpoint("ep").plan = JobPlan(queue_s=30)
    waiting = client.post("run", {"input": {}}).json()["id"]
    metrics = scrape(emulator)
    assert metrics[("facegen_runpod_emulator_queue_length", (("endpoint", "ep"),))] == 1
    assert metrics[("facegen_runpod_emulator_jobs_submitted_total", (("endpoint", "ep"),))] == 1
    client.post(f"cancel/{waiting}", None)
    emulator.endpoint("ep").plan = JobPlan(run_s=0.05)
    done = client.post("run", {"input": files(emulator)}).json()["id"]
    client.wait_status(done, {"COMPLETED"})
    metrics = scrape(emulator)
    assert metrics[("facegen_runpod_emulator_queue_length", (("endpoint", "ep"),))] == 0
    assert metrics[("facegen_runpod_emulator_jobs_in_progress", (("endpoint", "ep"),))] == 0
    for status in ("CANCELLED", "COMPLETED"):
        assert metrics[("facegen_runpod_emulator_jobs_total", (("endpoint", "ep"), ("status", status)))] == 1


def test_auth_unknown_endpoints_jobs_and_bad_requests(emulator: RunPodEmulator, client: Client) -> None:
    url = f"{client.base}/run"
    assert requests.post(url, json={"input": {}}, timeout=10).status_code == 401
    assert requests.post(url, json={"input": {}}, headers={"Authorization": "Bearer nope"},
                         timeout=10).status_code == 401
    assert requests.post(url, json={"input": {}}, headers={"Authorization": KEY}, timeout=10).status_code == 200
    other = requests.get(f"{emulator.base_url}/another/health", headers=client.headers, timeout=10)
    assert other.status_code == 404 and "another" in other.json()["error"]
    assert client.get("status/no-such-job").status_code == 404
    assert client.post("cancel/no-such-job").status_code == 404
    assert client.post("run", {"no_input": 1}).status_code == 400
    assert client.post("run", data=b"{not json").status_code == 400
    assert client.post("run", {"input": {}, "policy": {"ttl": -5}}).status_code == 400
    assert client.get("status/x?wait=soon").status_code == 400
    refused = client.get("run")
    assert refused.status_code == 405 and refused.json() == {"error": "Method Not Allowed"}
    big = client.post("run", {"input": {"target_file": "A" * (10 * 1024 * 1024 + 10)}})
    assert big.status_code == 413 and "payload too large" in big.json()["error"]
    assert emulator.count("run") == 7  # every request that reached a route is recorded, refused ones too


def test_queue_limit_answers_429_and_purge_empties_the_queue(emulator: RunPodEmulator) -> None:
    endpoint = emulator.endpoint("small", limits=Limits(max_queue=2))
    endpoint.plan = JobPlan(queue_s=30)
    client = Client(emulator, "small")
    queued = [client.post("run", {"input": {}}).json()["id"] for _ in range(2)]
    refused = client.post("run", {"input": {}})
    assert refused.status_code == 429 and "queue is full" in refused.json()["error"]
    assert client.get("health").json()["jobs"]["inQueue"] == 2
    assert client.post("purge-queue").json() == {"removed": 2, "status": "completed"}
    assert all(client.get(f"status/{job_id}").status_code == 404 for job_id in queued)
    assert client.post("run", {"input": {}}).status_code == 200


def test_ttl_and_execution_timeout_end_jobs_as_timed_out(emulator: RunPodEmulator, client: Client) -> None:
    emulator.endpoint("ep").plan = JobPlan(queue_s=30)
    queued = client.post("run", {"input": {}, "policy": {"ttl": 300}}).json()
    body = client.wait_status(queued["id"], {"TIMED_OUT"})
    assert "ttl of 300 ms" in body["error"] and "executionTime" not in body
    assert client.post(f"cancel/{queued['id']}").json()["status"] == "TIMED_OUT"  # finished jobs stay finished
    emulator.endpoint("ep").plan = JobPlan(run_s=30)
    running = client.post("run", {"input": {}, "policy": {"executionTimeout": 400}}).json()
    body = client.wait_status(running["id"], {"TIMED_OUT"})
    assert "execution timeout of 400 ms" in body["error"] and body["executionTime"] >= 400


def test_results_are_kept_for_the_retention_period_then_404(emulator: RunPodEmulator) -> None:
    endpoint = emulator.endpoint("brief", limits=Limits(retention_s=0.5, runsync_retention_s=0.5))
    endpoint.plan = JobPlan(run_s=0.05, fetch_inputs=False)
    client = Client(emulator, "brief")
    body = client.post("runsync?wait=10000", {"input": {}}).json()
    assert body["status"] == "COMPLETED" and decoded(body["output"]).size == (32, 32)
    assert client.get(f"status/{body['id']}").status_code == 200
    until_sync(lambda: client.get(f"status/{body['id']}").status_code != 200, 10, "the result expiring", every_s=0.05)


def test_runsync_answers_the_status_alone_when_the_job_outlasts_the_wait(emulator: RunPodEmulator,
                                                                         client: Client) -> None:
    emulator.endpoint("ep").plan = JobPlan(run_s=30)
    started = time.monotonic()
    body = client.post("runsync?wait=300", {"input": {}}).json()
    assert set(body) == {"id", "status"} and body["status"] == "IN_PROGRESS"
    assert 0.25 <= time.monotonic() - started < 5


def test_injected_failure_then_retry_completes(emulator: RunPodEmulator, client: Client) -> None:
    emulator.endpoint("ep").plan = JobPlan(run_s=0.05, fetch_inputs=False)
    assert client.admin("POST", "faults", {"failure_rate": 1.0}).json()["failure_rate"] == 1.0
    failed = client.post("runsync?wait=10000", {"input": {}}).json()
    assert failed["status"] == "FAILED" and failed["error"] == "injected failure (fault injection)"
    assert client.admin("DELETE", "faults").json()["failure_rate"] == 0.0
    assert client.post(f"retry/{failed['id']}").json() == {"id": failed["id"], "status": "IN_QUEUE"}
    assert client.wait_status(failed["id"], {"COMPLETED", "FAILED"})["status"] == "COMPLETED"
    assert client.get("health").json()["jobs"]["retried"] == 1
    assert client.post(f"retry/{failed['id']}").status_code == 400  # only FAILED or TIMED_OUT


def test_crash_hang_and_unchanged_fates(emulator: RunPodEmulator, client: Client) -> None:
    endpoint = emulator.endpoint("ep")
    endpoint.plan = JobPlan(run_s=0.05)
    client.admin("POST", "faults", {"crash_rate": 1.0})
    crashed = client.post("runsync?wait=10000", {"input": files(emulator)}).json()
    assert crashed["status"] == "FAILED" and crashed["error"] == "worker process exited unexpectedly (code -9)"
    client.admin("POST", "faults", {"crash_rate": 0.0, "hang_rate": 1.0})
    hanging = client.post("run", {"input": files(emulator), "policy": {"executionTimeout": 500}}).json()
    assert client.wait_status(hanging["id"], {"IN_PROGRESS"})["status"] == "IN_PROGRESS"
    assert client.wait_status(hanging["id"], {"TIMED_OUT", "COMPLETED"})["status"] == "TIMED_OUT"
    client.admin("POST", "faults", {"hang_rate": 0.0, "unchanged_rate": 1.0})
    job_input = files(emulator)
    unchanged = client.post("runsync?wait=10000", {"input": job_input}).json()
    assert unchanged["status"] == "COMPLETED"
    name = job_input["target_file"].rsplit("/", 1)[1]
    assert base64.b64decode(unchanged["output"]["result"]) == emulator.files[name][0]  # byte for byte


def test_error_bursts_malformed_bodies_and_latency(emulator: RunPodEmulator, client: Client) -> None:
    job = client.post("run", {"input": {}}).json()
    state = client.admin("POST", "faults", {"error_burst": 2, "error_status": 429, "routes": ["status"]}).json()
    assert state["error_burst"] == 2 and state["routes"] == ["status"]
    assert [client.get(f"status/{job['id']}").status_code for _ in range(3)] == [429, 429, 200]
    assert client.get("health").status_code == 200  # other routes were not affected
    client.admin("POST", "faults", {"error_burst": 1, "error_status": 503, "routes": []})
    assert client.get("health").status_code == 503
    client.admin("POST", "faults", {"malformed_burst": 1})
    bad = client.get(f"status/{job['id']}")
    assert bad.status_code == 200
    with pytest.raises(ValueError):
        bad.json()
    client.admin("POST", "faults", {"latency_ms": 300})
    started = time.monotonic()
    assert client.get("health").status_code == 200
    assert time.monotonic() - started >= 0.3
    refused = client.admin("POST", "faults", {"nonsense": 1, "hang_rate": 2, "error_status": 404})
    assert refused.status_code == 400
    message = refused.json()["error"]
    assert all(part in message for part in ("nonsense: Extra inputs", "hang_rate: Input should be less",
                                            "error_status: Value error, must be 429 or a 5xx"))
    assert client.admin("GET", "faults").json()["latency_ms"] == 300  # a refused change changes nothing


def test_scripted_answers_over_the_admin_api(emulator: RunPodEmulator, client: Client) -> None:
    answer = client.admin("POST", "script", {"route": "run", "fault": "http", "status": 503, "retry_after": "2",
                                             "times": 2})
    assert answer.status_code == 200
    first = [client.post("run", {"input": {}}) for _ in range(3)]
    assert [r.status_code for r in first] == [503, 503, 200] and first[0].headers["Retry-After"] == "2"
    client.admin("POST", "script", {"route": "status", "fault": "reset", "times": None})
    for _ in range(2):
        with pytest.raises(requests.ConnectionError):
            client.get(f"status/{first[2].json()['id']}")
    client.admin("DELETE", "script")
    assert client.get(f"status/{first[2].json()['id']}").status_code == 200
    assert client.admin("GET", "requests?route=run").json() == {"count": 3}
    bad = client.admin("POST", "script", {"route": "nowhere", "fault": "explode"})
    assert bad.status_code == 400 and "route" in bad.json()["error"] and "fault" in bad.json()["error"]


def test_scripted_hang_delay_and_non_json_faults(emulator: RunPodEmulator, client: Client) -> None:
    endpoint = emulator.endpoint("ep")
    endpoint.script("health", Fault.hang(0.4)).script("health", Fault.delay(0.3)).script("health", Fault.non_json(502))
    started = time.monotonic()
    with pytest.raises(requests.ConnectionError):
        client.get("health")
    assert time.monotonic() - started >= 0.4
    started = time.monotonic()
    assert client.get("health").status_code == 200 and time.monotonic() - started >= 0.3
    bad = client.get("health")
    assert bad.status_code == 502 and bad.text.startswith("<html>")


def test_status_long_poll_returns_on_change_and_can_be_turned_off(emulator: RunPodEmulator,
                                                                  client: Client) -> None:
    endpoint = emulator.endpoint("ep")
    endpoint.plan = JobPlan(run_s=1.5, fetch_inputs=False)
    job = client.post("run", {"input": {}}).json()
    client.wait_status(job["id"], {"IN_PROGRESS"})
    started = time.monotonic()
    assert client.get(f"status/{job['id']}?wait=300").json()["status"] == "IN_PROGRESS"
    assert 0.25 <= time.monotonic() - started < 1.2  # nothing changed: held for the wait
    body = client.get(f"status/{job['id']}?wait=10000").json()
    assert body["status"] == "COMPLETED" and time.monotonic() - started < 5
    endpoint.supports_wait = False
    slow = client.post("run", {"input": {}}).json()
    started = time.monotonic()
    assert client.get(f"status/{slow['id']}?wait=5000").json()["status"] in ("IN_QUEUE", "IN_PROGRESS")
    assert time.monotonic() - started < 1


def test_cancel_of_a_queued_and_a_running_job(emulator: RunPodEmulator, client: Client) -> None:
    emulator.endpoint("ep").plan = JobPlan(queue_s=0.3, run_s=30, fetch_inputs=False)
    queued, running = (client.post("run", {"input": {}}).json() for _ in range(2))
    client.wait_status(running["id"], {"IN_PROGRESS"})
    for job in (queued, running):  # the first one has started by now too
        assert client.post(f"cancel/{job['id']}").json() == {"id": job["id"], "status": "CANCELLED"}
    assert emulator.job(running["id"]).cancelled_at is not None
    assert client.get("health").json()["jobs"]["inProgress"] == 0


def test_answers_go_out_at_once(client: Client) -> None:
    """Headers and body leave in two writes: with Nagle's algorithm on, each answer waits ~40 ms for an ACK."""
    took = []
    for _ in range(21):
        started = time.monotonic()
        assert client.get("health").status_code == 200
        took.append(time.monotonic() - started)
    assert sorted(took)[10] < 0.02, f"median answer time {sorted(took)[10] * 1000:.1f} ms"


def test_many_concurrent_clients(emulator: RunPodEmulator) -> None:
    emulator.endpoint("ep").plan = JobPlan(run_s=1.0, fetch_inputs=False)

    def one(_: int) -> str:
        with requests.Session() as session:
            job = session.post(f"{emulator.base_url}/ep/run", json={"input": {}},
                               headers={"Authorization": f"Bearer {KEY}"}, timeout=30).json()
            while True:
                body = session.get(f"{emulator.base_url}/ep/status/{job['id']}?wait=5000",
                                   headers={"Authorization": f"Bearer {KEY}"}, timeout=30).json()
                if body["status"] not in ("IN_QUEUE", "IN_PROGRESS"):
                    return str(body["status"])

    started = time.monotonic()
    with ThreadPoolExecutor(200) as pool:
        results = list(pool.map(one, range(200)))
    assert results == ["COMPLETED"] * 200
    assert time.monotonic() - started < 8  # 200 one-second jobs run side by side


def test_stop_drops_long_polls_ends_the_server_thread_and_closes_the_port() -> None:
    before = {t.name for t in threading.enumerate()}
    emulator = RunPodEmulator(api_key=KEY).start()
    emulator.endpoint("ep").plan = JobPlan(run_s=30, fetch_inputs=False)
    client = Client(emulator)
    job = client.post("run", {"input": {}}).json()
    dropped: list[BaseException] = []

    def long_poll() -> None:
        try:
            client.get(f"status/{job['id']}?wait=20000")
        except requests.ConnectionError as exc:
            dropped.append(exc)

    waiting = threading.Thread(target=long_poll, daemon=True)
    waiting.start()
    until_sync(lambda: emulator.count("status") > 0, 10, "the long-poll arriving")
    started = time.monotonic()
    emulator.stop()
    assert time.monotonic() - started < 1
    waiting.join(5)
    assert len(dropped) == 1  # the long-poll's connection was closed, not left to time out
    assert "runpod-emulator" not in {t.name for t in threading.enumerate()} - before
    with pytest.raises(requests.ConnectionError):
        requests.get(f"{emulator.base_url}/ep/health", timeout=2)


def test_the_program_serves_scripted_jobs_and_stops_on_sigterm() -> None:
    env = {**os.environ, "FACESWAP_ENDPOINT_API_KEY": KEY, "PYTHONUNBUFFERED": "1"}
    process = subprocess.Popen([sys.executable, "-m", "services.stack.runpod_emulator", "--port", "0",
                                "--endpoint-id", "prog", "--scripted-ms", "100"], cwd=REPO, env=env,
                               stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        assert process.stdout is not None
        lines: list[str] = []
        port = None
        while port is None or not any("endpoint.ready" in line for line in lines):
            line = process.stdout.readline()
            assert line, f"the program ended: {lines}"
            lines.append(line)
            port = port or next(iter(re.findall(r"endpoint\.listening .*port=(\d+)", line)), None)
        base = f"http://127.0.0.1:{port}/v2/prog"
        png = "data:image/png;base64," + base64.b64encode(png_bytes((20, 10), (0, 0, 0))).decode()
        body = requests.post(f"{base}/runsync", json={"input": {"source_file": png, "target_file": png}},
                             headers={"Authorization": f"Bearer {KEY}"}, timeout=10).json()
        assert body["status"] == "COMPLETED" and body["executionTime"] >= 100
        assert decoded(body["output"]).getpixel((0, 0)) == (255, 255, 255)
        assert KEY not in "".join(lines)  # the key is logged masked
        process.send_signal(signal.SIGTERM)
        assert process.wait(15) == 0
        assert "endpoint.stopped" in process.stdout.read()
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
