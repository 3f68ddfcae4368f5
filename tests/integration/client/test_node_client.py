"""The Node client's integration tests (``node --test``), against real gateway processes on a real Redis.

The gateways run in front of the fake generator and swapper of this process;
the Node tests break streams themselves (a TCP proxy of their own, a SIGKILL
of the first gateway by its pid).
"""

from __future__ import annotations

import asyncio
import base64
import os
import signal

import pytest

from tests.fakes.grpc_upstreams import FakeUpstreams, png_bytes
from tests.integration.client.conftest import StartGateways
from tests.integration.client.node import NODE_DIR, node_ready

pytestmark = pytest.mark.integration

# One job per Node test that runs one (the refused request makes none).
JOBS_RUN_BY_THE_NODE_TESTS = 5


async def run_node_tests(test_path: str, env: dict[str, str], within_s: float = 120) -> str:
    """Runs ``node --test`` on ``test_path`` (relative to clients/node); its output, failing on a failure."""
    process = await asyncio.create_subprocess_exec(
        node_ready(), "--test", "--test-concurrency=1", test_path, cwd=NODE_DIR, env={**os.environ, **env},
        stdin=asyncio.subprocess.DEVNULL, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT)
    try:
        output, _ = await asyncio.wait_for(process.communicate(), within_s)
    finally:
        if process.returncode is None:
            process.kill()
            await process.wait()
    text = output.decode(errors="replace")
    assert process.returncode == 0, f"node --test {test_path} failed:\n{text}"
    return text


async def test_the_node_client_resumes_against_real_gateways(gateways: StartGateways,
                                                             upstreams: FakeUpstreams) -> None:
    upstreams.generator.script.steps, upstreams.generator.script.step_delay = 8, 0.12
    first, second = await gateways(2)
    os.kill(second.pid, signal.SIGSTOP)  # the first runs every job; the last Node test wakes the second
    try:
        output = await run_node_tests("test/integration/", {
            "FACEGEN_TEST_GATEWAYS": f"{first.address},{second.address}",
            "FACEGEN_TEST_GATEWAY_PIDS": f"{first.pid},{second.pid}",
            "FACEGEN_TEST_GATEWAY_NAMES": f"{first.name},{second.name}",
            "FACEGEN_TEST_FACE_PNG_B64": base64.b64encode(png_bytes(48, 48)).decode(),
        })
    finally:
        os.kill(second.pid, signal.SIGCONT)
    assert "# fail 0" in output and "# pass 0" not in output
    assert first.process is not None and first.process.returncode is not None, "the Node test killed it"
    made = {request.job_id for request in upstreams.generator.requests}
    assert len(made) == JOBS_RUN_BY_THE_NODE_TESTS, "no Node test made a second job for one run"
