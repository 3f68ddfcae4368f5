"""`python -m services.gateway` starts, reports SERVING, and stops cleanly on SIGTERM."""

from __future__ import annotations

import asyncio
import os
import re
import signal
import sys
from pathlib import Path

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[3]


async def test_the_entry_point_serves_health_and_drains_on_sigterm() -> None:
    env = {**os.environ, "GATEWAY_LISTEN": "127.0.0.1:0", "GENERATOR_ADDRESS": "127.0.0.1:1",
           "SWAPPER_ADDRESS": "127.0.0.1:2", "GATEWAY_GRACE_SECONDS": "0.5",
           "GATEWAY_AUTH_TOKEN": "a-long-secret-token-value-123",
           "PYTHONPATH": os.pathsep.join([str(ROOT), str(ROOT / "protos")])}
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "services.gateway", cwd=ROOT, env=env,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT)
    assert process.stdout is not None
    lines: list[str] = []
    try:
        async with asyncio.timeout(30):
            while not any("event=server.serving" in line for line in lines):
                line = (await process.stdout.readline()).decode()
                assert line, "the gateway exited: " + "".join(lines)
                lines.append(line)
        match = re.search(r"event=server.listening .*port=(\d+)", "".join(lines))
        assert match is not None
        async with grpc.aio.insecure_channel(f"127.0.0.1:{match.group(1)}") as channel:
            reply = await health_pb2_grpc.HealthStub(channel).Check(
                health_pb2.HealthCheckRequest(service="facegen.v1.GatewayService"), timeout=5)
        assert reply.status == health_pb2.HealthCheckResponse.SERVING
        process.send_signal(signal.SIGTERM)
        rest = (await asyncio.wait_for(process.stdout.read(), 30)).decode()
        assert await asyncio.wait_for(process.wait(), 30) == 0
    finally:
        if process.returncode is None:
            process.kill()
            await process.wait()
    log = "".join(lines) + rest
    assert "event=server.stopped service=gateway" in log
    assert "a-long-secret-token-value-123" not in log
    assert "auth=…-123" in log
