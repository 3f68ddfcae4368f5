"""The local overlay's Redis, run for real: the container's own command, redis.conf and readiness
probe as kubectl renders them, with their paths moved into a temporary folder, started with
Debian's redis-server on a free loopback port.

It shows what the deployment docs promise: a Redis killed mid-stream (SIGKILL, no shutdown)
comes back with every write it acknowledged, and, as the control, the same Redis without its
append-only file comes back empty.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import os
import re
import shutil
import signal
import socket
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import redis.asyncio as aioredis
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import AuthenticationError, OutOfMemoryError

from tests.unit.deploy.deploy_facts import DEPLOY
from tests.unit.deploy.manifests import Obj, containers, pod_spec, render
from tests.waiting import until

# Real servers: not a unit test, though it lives beside the manifests it checks.
pytestmark = [
    pytest.mark.integration,
    pytest.mark.skipif(shutil.which("redis-server") is None or shutil.which("redis-cli") is None,
                       reason="redis-server is not installed (`make setup` installs Debian's redis-server)"),
]

READY_LINE = "Ready to accept connections"
EVENTS = 200


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


def _find(objects: list[Obj], kind: str, name: str) -> Obj:
    return next(obj for obj in objects if obj["kind"] == kind and obj["metadata"]["name"] == name)


@dataclass
class LocalRedis:
    """The overlay's Redis container, laid out under ``root`` instead of its mount paths."""

    root: Path
    script: str
    probe: list[str]
    password: str
    port: int
    starts: int = 0

    @classmethod
    def from_overlay(cls, root: Path, overrides: str = "") -> LocalRedis:
        """Renders the local overlay and lays out the redis pod's volumes under ``root``; ``overrides``
        are redis.conf lines appended to the rendered file."""
        objects = render(DEPLOY / "k8s", "overlays/local")
        statefulset = _find(objects, "StatefulSet", "redis")
        item = next(c for c in containers(statefulset) if c["name"] == "redis")
        spec = pod_spec(statefulset)
        assert spec is not None
        volumes = {volume["name"]: volume for volume in spec["volumes"]}
        moved: dict[str, Path] = {}
        files: dict[Path, str] = {}
        for mount in item["volumeMounts"]:
            folder = root / mount["name"]
            folder.mkdir(parents=True)
            moved[mount["mountPath"]] = folder
            volume = volumes.get(mount["name"], {})
            if "configMap" in volume:
                data = _find(objects, "ConfigMap", volume["configMap"]["name"])["data"]
                files.update({folder / filename: content for filename, content in data.items()})
            if "secret" in volume:
                data = _find(objects, "Secret", volume["secret"]["secretName"])["data"]
                files.update({folder / entry["path"]: base64.b64decode(data[entry["key"]]).decode()
                              for entry in volume["secret"]["items"]})
        # One pass, longest path first, so that a moved path is never moved again.
        pattern = re.compile("|".join(re.escape(path) for path in sorted(moved, key=len, reverse=True))
                             + r"(?=[/\s\")]|$)")

        def relocate(text: str) -> str:
            return pattern.sub(lambda match: str(moved[match.group(0)]), text)

        port = _free_port()
        for path, content in files.items():
            if path.suffix == ".conf":
                # Loopback and a free port here; everything else as deployed.
                content = relocate(content) + f"\n{overrides}\nbind 127.0.0.1\nport {port}\n"
            path.write_text(content)
        password = next(content for path, content in files.items() if path.name == "password")
        probe = [relocate(arg).replace("redis-cli ", f"redis-cli -p {port} ")
                 for arg in item["readinessProbe"]["exec"]["command"]]
        return cls(root=root, script=relocate(item["args"][0]), probe=probe, password=password, port=port)

    @contextlib.asynccontextmanager
    async def running(self) -> AsyncIterator[asyncio.subprocess.Process]:
        """The container's command, running until the block ends (then SIGKILLed if still alive)."""
        self.starts += 1
        log = self.root / f"redis-{self.starts}.log"
        with log.open("w") as out:
            process = await asyncio.create_subprocess_exec("sh", "-c", self.script, stdout=out,
                                                           stderr=asyncio.subprocess.STDOUT,
                                                           start_new_session=True)
        try:
            await until(lambda: READY_LINE in log.read_text() or process.returncode is not None, 20,
                        "redis-server ready")
            assert process.returncode is None, f"redis-server exited:\n{log.read_text()}"
            yield process
        finally:
            if process.returncode is None:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(process.pid, signal.SIGKILL)
                await process.wait()

    def private_files(self) -> list[str]:
        """Names of the files the container's command wrote for its owner's eyes only."""
        return sorted(path.name for path in (self.root / "tmp").iterdir() if path.stat().st_mode & 0o077 == 0)

    async def probe_passes(self) -> bool:
        """Runs the pod's readiness probe command."""
        process = await asyncio.create_subprocess_exec(*self.probe)
        return await process.wait() == 0

    def client(self, password: str | None = None) -> aioredis.Redis:
        # No retries: redis-py retries a refused AUTH (a ConnectionError) with backoff by default.
        return aioredis.Redis(host="127.0.0.1", port=self.port, password=password, socket_timeout=5,
                              retry=Retry(NoBackoff(), 0))


async def _write_a_job(client: aioredis.Redis) -> None:
    """What the job store writes for one job: a record and a stream of events, each acknowledged."""
    await client.hset("job:{j1}", mapping={"state": "RUNNING", "seed": "42"})
    for seq in range(1, EVENTS + 1):
        await client.xadd("job:{j1}:events", {"seq": seq})


async def test_a_killed_redis_comes_back_with_every_acknowledged_write(tmp_path: Path) -> None:
    local = LocalRedis.from_overlay(tmp_path)
    async with local.running() as server:
        with pytest.raises(AuthenticationError):
            await local.client().ping()
        client = local.client(local.password)
        assert await client.config_get("appendonly") == {"appendonly": "yes"}
        assert await client.config_get("appendfsync") == {"appendfsync": "everysec"}
        assert await client.config_get("maxmemory-policy") == {"maxmemory-policy": "noeviction"}
        assert await local.probe_passes()
        assert local.private_files() == ["redis-auth.conf"], "the password include is readable by others"
        await _write_a_job(client)
        # No shutdown, no fsync on the way out: as when the kernel kills the container.
        server.kill()
        await server.wait()
        await client.aclose()
    assert not await local.probe_passes(), "the readiness probe passes with Redis down"

    async with local.running():
        client = local.client(local.password)
        assert await local.probe_passes()
        assert await client.hgetall("job:{j1}") == {b"state": b"RUNNING", b"seed": b"42"}
        events = await client.xrange("job:{j1}:events")
        assert [int(fields[b"seq"]) for _, fields in events] == list(range(1, EVENTS + 1))
        await client.aclose()


async def test_without_its_append_only_file_a_restarted_redis_has_lost_every_job(tmp_path: Path) -> None:
    local = LocalRedis.from_overlay(tmp_path, overrides="appendonly no")
    async with local.running() as server:
        client = local.client(local.password)
        await _write_a_job(client)
        server.kill()
        await server.wait()
        await client.aclose()
    async with local.running():
        client = local.client(local.password)
        assert await client.exists("job:{j1}", "job:{j1}:events") == 0
        await client.aclose()


async def test_the_job_store_is_never_evicted_to_make_room(tmp_path: Path) -> None:
    local = LocalRedis.from_overlay(tmp_path, overrides="maxmemory 2mb")
    async with local.running():
        client = local.client(local.password)
        await _write_a_job(client)
        with pytest.raises(OutOfMemoryError):
            for index in range(10_000):
                await client.set(f"filler:{index}", b"x" * 1024)
        assert await client.xlen("job:{j1}:events") == EVENTS
        await client.aclose()
