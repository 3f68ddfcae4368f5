"""The `facegen` command as a process: Ctrl-C cancels the job; a restarted gateway is ridden out."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from facegen.v1 import gateway_pb2
from services.cli.main import EXIT_CANCELLED, EXIT_OK
from tests.fakes.grpc_upstreams import FakeUpstreams, png_bytes
from tests.gateway_process import ROOT
from tests.integration.client.conftest import StartGateways, restart

pytestmark = pytest.mark.integration


async def start_cli(address: str, face: Path, *extra: str) -> asyncio.subprocess.Process:
    """``facegen --json run`` against ``address`` with ``face``, as its own process."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), str(ROOT / "protos")])}
    return await asyncio.create_subprocess_exec(
        sys.executable, "-m", "services.cli", "--gateway", address, "--json", "run", "--prompt", "a portrait",
        "--reference", str(face), "--no-download", *extra, cwd=ROOT, env=env, stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE, stderr=subprocess.PIPE)


@pytest.fixture
def face(tmp_path: Path) -> Path:
    path = tmp_path / "face.png"
    path.write_bytes(png_bytes(48, 48))
    return path


async def test_ctrl_c_during_run_cancels_the_job_everywhere(
        gateways: StartGateways, upstreams: FakeUpstreams, face: Path) -> None:
    upstreams.generator.script.gate = asyncio.Event()
    (gateway,) = await gateways(1, store="memory")
    cli = await start_cli(gateway.address, face)
    await upstreams.generator.wait_for(lambda g: g.active == 1, within=30)
    cli.send_signal(signal.SIGINT)
    stdout, stderr = await asyncio.wait_for(cli.communicate(), 30)
    said = f"exit {cli.returncode}\nstdout: {stdout.decode()}\nstderr: {stderr.decode()}"
    assert cli.returncode == EXIT_CANCELLED, said
    assert "cancelled" in stderr.decode(), said
    (job_id,) = {request.job_id for request in upstreams.generator.requests}
    await upstreams.generator.wait_for(lambda g: job_id in g.cancelled, within=10)
    job = await gateway.stub.Get(gateway_pb2.GetRequest(job_id=job_id))
    assert job.state == gateway_pb2.JOB_STATE_CANCELLED


async def test_cli_run_rides_out_a_gateway_restart(gateways: StartGateways, upstreams: FakeUpstreams,
                                                   face: Path) -> None:
    upstreams.generator.script.steps, upstreams.generator.script.step_delay = 10, 0.2
    (gateway,) = await gateways(1)
    cli = await start_cli(gateway.address, face)
    await upstreams.generator.wait_for(lambda g: g.active == 1, within=30)
    await restart(gateway)
    stdout, stderr = await asyncio.wait_for(cli.communicate(), 60)
    assert cli.returncode == EXIT_OK, stderr.decode()
    events = [json.loads(line) for line in stdout.decode().splitlines()]
    assert [event["seq"] for event in events] == [str(seq) for seq in range(1, len(events) + 1)]
    assert events[-1]["result"]["state"] == "JOB_STATE_COMPLETED"
    assert sum(bool(event.get("resumed")) for event in events) == 1
    assert "event=client.retry" in stderr.decode(), "the CLI says when it re-attaches"
