"""Faithfulness: the official runpod SDK client (runpod.Endpoint) drives the emulator as it would RunPod."""

from __future__ import annotations

import base64
import io
import time
from collections.abc import Iterator

import pytest
import runpod
from PIL import Image

from services.stack.runpod_emulator import JobPlan, RunPodEmulator, cycle_plans
from tests.worker.conftest import RunningEndpoint
from tests.worker.test_endpoint import TINY

pytestmark = pytest.mark.integration


def _point_sdk_at(monkeypatch: pytest.MonkeyPatch, ep: RunningEndpoint, key: str | None = None) -> runpod.Endpoint:
    monkeypatch.setattr(runpod, "endpoint_url_base", f"http://127.0.0.1:{ep.port}/v2")
    monkeypatch.setattr(runpod, "api_key", key or ep.api_key)
    return runpod.Endpoint(ep.endpoint_id)


@pytest.fixture(scope="module")
def scripted() -> Iterator[RunPodEmulator]:
    """The emulator in this process with scripted jobs: the first runs 30 s, the next waits 30 s in the queue."""
    emulator = RunPodEmulator(api_key="rpa_SCRIPTED_0123456789").start()
    emulator.endpoint("ep-slow").plan = cycle_plans([JobPlan(run_s=30, fetch_inputs=False),
                                                     JobPlan(queue_s=30, fetch_inputs=False)])
    yield emulator
    emulator.stop()


def test_run_status_output(monkeypatch: pytest.MonkeyPatch, real_endpoint: RunningEndpoint,
                           astronaut_uri: str, grace_uri: str) -> None:
    endpoint = _point_sdk_at(monkeypatch, real_endpoint)
    job = endpoint.run({"process_type": "single_image", "source_file": grace_uri, "target_file": astronaut_uri,
                        "options": {"mouth_mask": True, "use_face_enhancer": False}})
    assert job.status() in ("IN_QUEUE", "IN_PROGRESS", "COMPLETED")
    output = job.output(timeout=60)
    assert job.status() == "COMPLETED"
    image = Image.open(io.BytesIO(base64.b64decode(output["result"])))
    assert image.format == "JPEG" and image.size == (512, 512)


def test_run_sync_and_failed_job(monkeypatch: pytest.MonkeyPatch, real_endpoint: RunningEndpoint,
                                 astronaut_uri: str, grace_uri: str) -> None:
    endpoint = _point_sdk_at(monkeypatch, real_endpoint)
    output = endpoint.run_sync({"process_type": "detect_faces", "image_file": astronaut_uri}, timeout=60)
    assert output["face_count"] == 1
    failing = endpoint.run({"source_file": TINY["source_file"], "target_file": astronaut_uri})
    assert failing.output(timeout=60) is None  # as against RunPod: a FAILED job has no output
    assert failing.status() == "FAILED"
    raw = failing._fetch_job()
    assert raw["error"] == "no face found in source image"


def test_health(monkeypatch: pytest.MonkeyPatch, real_endpoint: RunningEndpoint) -> None:
    health = _point_sdk_at(monkeypatch, real_endpoint).health()
    assert health["workers"]["ready"] + health["workers"]["initializing"] == 2
    assert health["jobs"]["completed"] >= 0


def test_wrong_key_is_unauthorized(monkeypatch: pytest.MonkeyPatch, real_endpoint: RunningEndpoint) -> None:
    endpoint = _point_sdk_at(monkeypatch, real_endpoint, key="rpa_WRONG")
    with pytest.raises(RuntimeError, match="Unauthorized"):
        endpoint.health()


def test_cancel_and_purge(monkeypatch: pytest.MonkeyPatch, scripted: RunPodEmulator) -> None:
    monkeypatch.setattr(runpod, "endpoint_url_base", scripted.base_url)
    monkeypatch.setattr(runpod, "api_key", scripted.api_key)
    endpoint = runpod.Endpoint("ep-slow")
    running = endpoint.run(TINY)
    deadline = time.monotonic() + 10
    while running.status() != "IN_PROGRESS":
        assert time.monotonic() < deadline
        time.sleep(0.05)
    queued = endpoint.run(TINY)
    assert queued.status() == "IN_QUEUE"
    assert endpoint.purge_queue() == {"removed": 1, "status": "completed"}
    assert running.cancel() == {"id": running.job_id, "status": "CANCELLED"}
    assert running.status() == "CANCELLED"
    assert running.output() is None


async def test_asyncio_client(monkeypatch: pytest.MonkeyPatch, real_endpoint: RunningEndpoint,
                              astronaut_uri: str, grace_uri: str) -> None:
    """runpod.AsyncioEndpoint (aiohttp) works against the local endpoint too."""
    from aiohttp import ClientSession

    monkeypatch.setattr(runpod, "endpoint_url_base", f"http://127.0.0.1:{real_endpoint.port}/v2")
    monkeypatch.setattr(runpod, "api_key", real_endpoint.api_key)
    async with ClientSession() as session:
        endpoint = runpod.AsyncioEndpoint(real_endpoint.endpoint_id, session)
        job = await endpoint.run({"source_file": grace_uri, "target_file": astronaut_uri})
        output = await job.output(timeout=60)
        assert await job.status() == "COMPLETED"
        assert Image.open(io.BytesIO(base64.b64decode(output["result"]))).size == (512, 512)
        health = await endpoint.health()
        assert health["jobs"]["completed"] >= 1
