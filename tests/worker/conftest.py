"""Fixtures for the face-swap worker's tests.

Run with the worker venv: .venv-worker/bin/python -m pytest tests/worker
"""

from __future__ import annotations

import base64
import os
import re
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pytest
import requests

from services.faceswap_worker import samples
from services.faceswap_worker.engine import SwapEngine

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="session")
def astronaut() -> np.ndarray:
    return samples.astronaut()


@pytest.fixture(scope="session")
def grace_hopper() -> np.ndarray:
    return samples.grace_hopper()


@pytest.fixture(scope="session")
def engine() -> SwapEngine:
    return SwapEngine()


def data_uri(data: bytes, mime: str) -> str:
    return f"data:{mime};base64,{base64.b64encode(data).decode()}"


@pytest.fixture(scope="session")
def astronaut_uri() -> str:
    return data_uri(samples.astronaut_png(), "image/png")


@pytest.fixture(scope="session")
def grace_uri() -> str:
    return data_uri(samples.grace_hopper_jpg(), "image/jpeg")


@dataclass
class RunningEndpoint:
    """A local endpoint process started with the documented command line."""

    process: subprocess.Popen[str]
    port: int
    endpoint_id: str
    api_key: str
    lines: list[str] = field(default_factory=list)
    _reader: threading.Thread | None = None

    @property
    def base(self) -> str:
        return f"http://127.0.0.1:{self.port}/v2/{self.endpoint_id}"

    @property
    def headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.api_key}"}

    def post(self, path: str, json: object = None, timeout: float = 30, **kw: object) -> requests.Response:
        return requests.post(f"{self.base}/{path}", json=json, headers=self.headers, timeout=timeout, **kw)

    def get(self, path: str, timeout: float = 30) -> requests.Response:
        return requests.get(f"{self.base}/{path}", headers=self.headers, timeout=timeout)

    def admin(self, faults: dict[str, object] | None = None) -> dict[str, object]:
        """Set (or with None, clear) the endpoint's fault settings."""
        url = f"http://127.0.0.1:{self.port}/admin/faults"
        if faults is None:
            resp = requests.delete(url, headers=self.headers, timeout=10)
        else:
            resp = requests.post(url, json=faults, headers=self.headers, timeout=10)
        resp.raise_for_status()
        return dict(resp.json())

    def wait_status(self, job_id: str, statuses: set[str], timeout: float = 30) -> dict[str, object]:
        """Poll (a plain look, then a long-poll that returns on the next change) until the job reaches ``statuses``."""
        deadline = time.monotonic() + timeout
        body: dict[str, object] = {}
        while time.monotonic() < deadline:
            for query in ("", "?wait=2000"):
                body = self.get(f"status/{job_id}{query}").json()
                if body["status"] in statuses:
                    return body
        raise AssertionError(f"job {job_id} stayed {body.get('status')} (wanted {statuses})")

    def wait_line(self, pattern: str, timeout: float = 30) -> re.Match[str]:
        regex = re.compile(pattern)
        deadline = time.monotonic() + timeout
        seen = 0
        while time.monotonic() < deadline:
            while seen < len(self.lines):
                m = regex.search(self.lines[seen])
                seen += 1
                if m:
                    return m
            if self.process.poll() is not None:
                raise AssertionError(f"endpoint exited {self.process.returncode}: {self.lines[-20:]}")
            time.sleep(0.02)
        raise AssertionError(f"no log line matching {pattern!r}: {self.lines[-20:]}")

    def stop(self) -> int:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
        return self.process.wait(15)


def start_endpoint(*extra: str, workers: int = 2, endpoint_id: str = "ep-test") -> RunningEndpoint:
    """Start the RunPod emulator with real workers (as the local stack does) on a free port; wait until ready."""
    api_key = "rpa_TESTKEY_0123456789abcdef"
    cmd = [
        sys.executable, "-m", "services.stack.runpod_emulator", "--host", "127.0.0.1", "--port", "0",
        "--endpoint-id", endpoint_id, "--api-key", api_key, "--workers", str(workers), *extra,
    ]
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    proc = subprocess.Popen(cmd, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True, env=env)
    ep = RunningEndpoint(proc, 0, endpoint_id, api_key)

    def read() -> None:
        assert proc.stdout is not None
        for line in proc.stdout:
            ep.lines.append(line.rstrip("\n"))

    ep._reader = threading.Thread(target=read, daemon=True)
    ep._reader.start()
    ep.port = int(ep.wait_line(r"endpoint\.listening .*port=(\d+)").group(1))
    ep.wait_line(r"endpoint\.ready", timeout=60)
    return ep


@pytest.fixture(scope="session")
def real_endpoint() -> Iterator[RunningEndpoint]:
    """Two worker processes running the real handler (and one warm spare); short RunPod minimums for tests."""
    ep = start_endpoint("--min-execution-timeout-ms", "100", workers=2)
    yield ep
    ep.stop()


def pytest_configure(config: pytest.Config) -> None:
    # matplotlib 3.10.0 (imported by mediapipe) still calls pyparsing's old camelCase names.
    config.addinivalue_line("filterwarnings", "ignore:.* deprecated - use .*:DeprecationWarning")
