"""``python -m services.generator`` as a process: loads a hub model from the local cache offline,
becomes healthy, serves, and stops on SIGTERM; its device processes' fork server logs in its format."""

from __future__ import annotations

import asyncio
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from facegen.v1 import common_pb2, generator_pb2, generator_pb2_grpc
from services.common.channel import internal_channel
from services.generator.settings import REPO_ROOT

pytestmark = pytest.mark.integration


async def read_until(stream: asyncio.StreamReader, pattern: str, lines: list[str], within_s: float) -> re.Match[str]:
    deadline = time.monotonic() + within_s
    while True:
        remaining = deadline - time.monotonic()
        assert remaining > 0, f"no line matching {pattern!r}; log so far:\n" + "".join(lines)
        line = (await asyncio.wait_for(stream.readline(), remaining)).decode()
        assert line, "the generator exited early; log:\n" + "".join(lines)
        lines.append(line)
        match = re.search(pattern, line)
        if match:
            return match


CATALOG = """
default_model = "cached-sd"

[models.cached-sd]
family = "sd"
hf_id = "facegen-test/tiny-sd"
default_width = 64
default_height = 64
min_size = 64
max_size = 256
default_steps = 2
max_steps = 10
default_guidance = 5.0
"""


def fake_hub_cache(root: Path, repo_id: str, model_dir: Path) -> Path:
    """A Hugging Face cache holding ``model_dir`` as the snapshot of ``repo_id``, laid out as the hub does."""
    repo = root / f"models--{repo_id.replace('/', '--')}"
    revision = "0123456789abcdef0123456789abcdef01234567"
    shutil.copytree(model_dir, repo / "snapshots" / revision)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(revision)
    return root


async def test_module_entry_point_loads_a_cached_hub_model_offline_and_stops_on_sigterm(
        tiny_models_dir: Path, tmp_path: Path) -> None:
    catalog = tmp_path / "catalog.toml"
    catalog.write_text(CATALOG)
    hub = fake_hub_cache(tmp_path / "hub", "facegen-test/tiny-sd", tiny_models_dir / "tiny-sd")
    env = {**os.environ, "GENERATOR_LISTEN": "127.0.0.1:0", "GENERATOR_CATALOG": str(catalog),
           "GENERATOR_DEVICE": "cpu", "HF_HUB_OFFLINE": "1", "HF_HUB_CACHE": str(hub),
           "GENERATOR_GRACE_SECONDS": "1"}
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "services.generator", cwd=REPO_ROOT, env=env,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT)
    assert process.stdout is not None
    lines: list[str] = []
    try:
        port = int((await read_until(process.stdout, r"event=server\.listening .* port=(\d+)", lines, 90))[1])
        await read_until(process.stdout, r"event=server\.serving", lines, 90)
        assert any("event=model.warm model=cached-sd" in line for line in lines)
        async with internal_channel(f"127.0.0.1:{port}") as channel:
            health = await health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=10)
            assert health.status == health_pb2.HealthCheckResponse.SERVING
            stub = generator_pb2_grpc.GeneratorServiceStub(channel)
            request = generator_pb2.GenerateRequest(job_id="main-1", prompt="a cat")
            events = [event async for event in stub.Generate(request, timeout=30)]
            assert [e.WhichOneof("event") for e in events][-2:] == ["image", "done"]
            assert events[-1].done.model == "cached-sd"
            models = (await stub.ListModels(common_pb2.ListModelsRequest(), timeout=10)).models
            assert [(m.name, m.loaded, m.is_default) for m in models] == [("cached-sd", True, True)]
        await read_until(process.stdout, r"job=main-1 event=generate\.finished", lines, 30)
        process.send_signal(signal.SIGTERM)
        assert await asyncio.wait_for(process.wait(), 30) == 0
    finally:
        if process.returncode is None:
            process.kill()
            await process.wait()


def test_the_fork_server_logs_in_the_services_format() -> None:
    # The device processes' fork server imports the pipelines' modules, and transformers warns while
    # they load: with LOG_FORMAT=json those lines must be JSON lines of the generator too.
    env = {**os.environ, "LOG_FORMAT": "json", "HF_HUB_OFFLINE": "1"}
    done = subprocess.run([sys.executable, "-c", "import services.generator.device_preload"], cwd=REPO_ROOT,
                          env=env, capture_output=True, text=True, timeout=180, check=False)
    assert done.returncode == 0, done.stderr
    for line in (done.stdout + done.stderr).splitlines():
        assert line.startswith("{"), f"not a JSON line: {line!r}"
        entry = json.loads(line)
        assert entry["service"] == "generator" and entry["level"] in ("warning", "error"), entry
