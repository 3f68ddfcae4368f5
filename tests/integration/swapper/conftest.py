"""Fixtures for the swapper's integration tests: embedded S3, the fake RunPod, in-process servers."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import grpc
import pytest

from facegen.v1 import swapper_pb2_grpc
from services.common.config import Env
from services.common.server import ServiceServer
from services.stack.runpod_emulator import RunPodEmulator as FakeRunPod
from services.swapper.embedded_s3 import EmbeddedS3
from services.swapper.service import SERVICE_NAME, SwapperApp
from services.swapper.settings import Settings
from tests.integration.swapper.harness import API_KEY, BACKUP, PRIMARY, Harness, MakeSwapper
from tests.redis_server import RedisServer


@pytest.fixture(scope="session")
def s3_server() -> Iterator[EmbeddedS3]:
    """moto's S3 on loopback, shared by the session (each test uses its own bucket)."""
    server = EmbeddedS3().start()
    yield server
    server.stop()


@pytest.fixture
def fake_runpod() -> Iterator[FakeRunPod]:
    """A fresh fake RunPod with a primary and a backup endpoint."""
    fake = FakeRunPod(api_key=API_KEY).start()
    fake.endpoint(PRIMARY)
    fake.endpoint(BACKUP)
    yield fake
    fake.stop()


@pytest.fixture
def bucket() -> str:
    """A bucket name unique to the test."""
    return f"t-{uuid.uuid4().hex[:16]}"


@pytest.fixture
def base_env(s3_server: EmbeddedS3, fake_runpod: FakeRunPod, bucket: str) -> dict[str, str]:
    """Settings for a swapper on the embedded S3 and the fake RunPod, with short timings for tests."""
    return {
        "S3_ENDPOINT_URL": s3_server.url,
        "S3_ACCESS_KEY_ID": "test-access-key",
        "S3_SECRET_ACCESS_KEY": "test-secret-key",
        "S3_BUCKET": bucket,
        "S3_CREATE_BUCKET": "true",
        "S3_MAX_ATTEMPTS": "1",
        "RUNPOD_API_KEY": API_KEY,
        "RUNPOD_API_BASE": fake_runpod.base_url,
        "FACE_SWAP_ENDPOINT": PRIMARY,
        "FACE_SWAP_DEADLINE_SECONDS": "5",
        "FACE_SWAP_POLL_MIN_MS": "20",
        "FACE_SWAP_POLL_MAX_MS": "100",
        "FACE_SWAP_STATUS_WAIT_MS": "2000",
        "FACE_SWAP_HTTP_TIMEOUT_SECONDS": "2",
        "FACE_SWAP_CANCEL_TIMEOUT_SECONDS": "2",
        "SWAPPER_LISTEN": "127.0.0.1:0",
        "SWAPPER_HTTP_CONNECTIONS": "16",
        "SWAPPER_STORAGE_THREADS": "8",
    }


@pytest.fixture
async def make_swapper(base_env: dict[str, str], fake_runpod: FakeRunPod) -> AsyncIterator[MakeSwapper]:
    """Builds in-process swappers; ``None`` as a value removes that variable."""
    made: list[Harness] = []

    async def make(ready: bool = True, **overrides: str | None) -> Harness:
        env = dict(base_env)
        for name, value in overrides.items():
            if value is None:
                env.pop(name, None)
            else:
                env[name] = value
        settings = Settings.from_env(Env(env))
        app = SwapperApp(settings)
        server = ServiceServer(settings.server, [SERVICE_NAME], app.register)
        port = await server.start()
        if ready:
            await app.start_once()
            await server.set_serving(True)
        channel = grpc.aio.insecure_channel(f"127.0.0.1:{port}")
        harness = Harness(app, server, channel, swapper_pb2_grpc.SwapperServiceStub(channel), settings,
                          fake_runpod)
        made.append(harness)
        return harness

    yield make
    for harness in made:
        await harness.close()


@pytest.fixture
def redis_url(tmp_path: Path) -> Iterator[str]:
    """A real redis-server of its own on a free loopback port, without persistence."""
    with RedisServer(tmp_path, appendonly=False) as server:
        yield server.url
