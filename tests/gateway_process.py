"""Gateways as real processes (``python -m services.gateway``) that a test can SIGKILL or SIGTERM."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
from pathlib import Path

import grpc

from facegen.v1 import gateway_pb2_grpc
from services.common.config import MAX_MESSAGE_BYTES
from services.common.health import wait_until_serving
from services.common.server import message_size_options
from tests.redis_server import free_port

ROOT = Path(__file__).resolve().parents[1]


class GatewayProcess:
    """One gateway replica in its own process, its log in ``log_path``."""

    def __init__(self, name: str, log_dir: Path, env: dict[str, str],
                 credentials: grpc.ChannelCredentials | None = None,
                 python_args: tuple[str, ...] = ("-m", "services.gateway")) -> None:
        self.name = name
        # What the interpreter runs (a benchmark may run the gateway under a profiler).
        self.python_args = python_args
        # For a gateway that serves TLS (GATEWAY_TLS_*): how this test's own channel connects.
        self.credentials = credentials
        self.port = free_port()
        self.address = f"127.0.0.1:{self.port}"
        self.log_path = log_dir / f"{name}.log"
        self.env = {**os.environ, **env, "GATEWAY_LISTEN": self.address, "GATEWAY_INSTANCE": name,
                    "PYTHONPATH": os.pathsep.join([str(ROOT), str(ROOT / "protos")]), "PYTHONUNBUFFERED": "1"}
        self.process: asyncio.subprocess.Process | None = None
        self.channel: grpc.aio.Channel | None = None

    async def start(self, within_s: float = 30.0) -> GatewayProcess:
        """Starts the process and waits until it reports SERVING."""
        with self.log_path.open("ab") as log:
            self.process = await asyncio.create_subprocess_exec(
                sys.executable, *self.python_args, cwd=ROOT, env=self.env, stdout=log,
                stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
        options = message_size_options(MAX_MESSAGE_BYTES)
        self.channel = (grpc.aio.secure_channel(self.address, self.credentials, options=options)
                        if self.credentials is not None else grpc.aio.insecure_channel(self.address, options=options))
        try:
            await wait_until_serving(self.channel, within_s)
        except (TimeoutError, grpc.aio.AioRpcError) as exc:
            raise AssertionError(f"{self.name} did not start:\n{self.log()}") from exc
        return self

    @property
    def stub(self) -> gateway_pb2_grpc.GatewayServiceStub:
        """A stub on this gateway."""
        assert self.channel is not None
        return gateway_pb2_grpc.GatewayServiceStub(self.channel)

    @property
    def pid(self) -> int:
        """The process id."""
        assert self.process is not None
        return int(self.process.pid)

    async def kill(self) -> None:
        """SIGKILL: the process vanishes without any clean-up, as on a node loss."""
        assert self.process is not None
        self.process.send_signal(signal.SIGKILL)
        await asyncio.wait_for(self.process.wait(), 10)

    def terminate(self) -> None:
        """SIGTERM: what a rollout sends."""
        assert self.process is not None
        self.process.send_signal(signal.SIGTERM)

    async def wait(self, within_s: float) -> int:
        """Waits for the process to exit; its exit code."""
        assert self.process is not None
        return await asyncio.wait_for(self.process.wait(), within_s)

    async def close(self) -> None:
        """Stops the process if it still runs, and closes the channel."""
        if self.channel is not None:
            await self.channel.close()
        if self.process is not None and self.process.returncode is None:
            self.process.kill()
            await asyncio.wait_for(self.process.wait(), 10)

    def log(self) -> str:
        """The process's output so far."""
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""
