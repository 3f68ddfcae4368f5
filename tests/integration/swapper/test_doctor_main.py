"""The doctor against the fake RunPod, and ``python -m services.swapper`` as a real process."""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import subprocess
import sys
from pathlib import Path

import grpc
import pytest

from facegen.v1 import common_pb2, swapper_pb2, swapper_pb2_grpc
from services.common.health import wait_until_serving
from services.stack.runpod_emulator import Fault
from services.stack.runpod_emulator import RunPodEmulator as FakeRunPod
from services.stack.samples import reference_face, template_photo, write_samples
from services.swapper.doctor import run_doctor
from services.swapper.s3 import S3Bucket
from services.swapper.settings import Settings
from tests.integration.swapper.harness import API_KEY, PRIMARY, image_bytes

pytestmark = pytest.mark.integration


async def doctor(env: dict[str, str], photos: bool = True) -> tuple[int, str]:
    lines: list[str] = []
    samples = (reference_face(), template_photo()) if photos else None
    code = await run_doctor(Settings.from_env(env), samples, lines.append)
    return code, "\n".join(lines)


async def test_doctor_passes_against_a_working_endpoint(base_env: dict[str, str], fake_runpod: FakeRunPod) -> None:
    code, output = await doctor(base_env)
    assert code == 0, output
    assert "…klmn" in output and API_KEY not in output
    assert f"PASS health {PRIMARY}: workers idle=1" in output
    assert "PASS storage: bucket" in output and "write, presigned read, delete ok" in output
    assert "PASS swap: external_api 512x512 image/png" in output
    assert "doctor: all 3 checks passed" in output
    job = fake_runpod.jobs()[0]
    assert job.input["process_type"] == "single_image"
    assert job.inputs is not None and job.inputs.done() and not job.inputs.exception(), \
        "the fake fetched both sample photos through their presigned URLs"
    source, target = job.inputs.result()
    assert source[:3] == b"\xff\xd8\xff" and target[:8] == b"\x89PNG\r\n\x1a\n"


async def test_doctor_fails_with_a_rejected_key(base_env: dict[str, str]) -> None:
    code, output = await doctor({**base_env, "RUNPOD_API_KEY": "rpa_WRONG0123456789abcdefghijklmno"})
    assert code == 1
    assert f"FAIL health {PRIMARY}" in output and "the RunPod API key was rejected" in output
    assert "FAIL swap: fell back (FALLBACK_REASON_KEY_REJECTED)" in output
    assert "PASS storage" in output


async def test_doctor_fails_when_the_swap_falls_back(base_env: dict[str, str], fake_runpod: FakeRunPod) -> None:
    fake_runpod.endpoint(PRIMARY).script("run", Fault.http(503), None)
    code, output = await doctor(base_env)
    assert code == 1
    assert "FAIL swap: fell back (FALLBACK_REASON_ENDPOINT_UNAVAILABLE)" in output


async def test_doctor_fails_without_an_endpoint_or_a_bucket(base_env: dict[str, str]) -> None:
    env = {k: v for k, v in base_env.items() if k not in ("FACE_SWAP_ENDPOINT",)}
    code, output = await doctor({**env, "S3_CREATE_BUCKET": "false"})
    assert code == 1
    assert "FAIL config: FACE_SWAP_ENDPOINT is not set" in output
    assert "FAIL storage" in output and "does not exist" in output


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def process_env(base_env: dict[str, str], **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("S3_", "R2_", "RUNPOD_", "FACE_SWAP_",
                                                                      "SWAPPER_"))}
    return {**env, **base_env, **extra}


async def test_the_service_process_serves_and_stops_on_sigterm(base_env: dict[str, str]) -> None:
    address = f"127.0.0.1:{free_port()}"
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "services.swapper", env=process_env(base_env, SWAPPER_LISTEN=address),
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT)
    try:
        async with grpc.aio.insecure_channel(address) as channel:
            await wait_until_serving(channel, 20)
            stub = swapper_pb2_grpc.SwapperServiceStub(channel)
            reference = await stub.PutReference(swapper_pb2.PutReferenceRequest(job_id="p", image=image_bytes()))
            events = [event async for event in stub.Swap(swapper_pb2.SwapRequest(
                job_id="proc", target_image=image_bytes(), reference_key=reference.key), timeout=20)]
            assert events[-1].result.method == common_pb2.FACE_SWAP_METHOD_EXTERNAL_API
        process.send_signal(signal.SIGTERM)
        output, _ = await asyncio.wait_for(process.communicate(), 20)
    finally:
        if process.returncode is None:
            process.kill()
            await process.wait()
    assert process.returncode == 0
    text = output.decode()
    assert "event=server.serving" in text and "event=server.stopped" in text
    assert "event=swap.result" in text and "job=proc" in text
    assert API_KEY not in text, "the API key never appears in the log"


async def test_a_configuration_error_exits_with_a_clear_message(base_env: dict[str, str]) -> None:
    result = await asyncio.to_thread(
        subprocess.run, [sys.executable, "-m", "services.swapper"],
        env=process_env(base_env, FACE_SWAP_DEADLINE_SECONDS="soon"), capture_output=True, timeout=30)
    assert result.returncode == 2
    assert result.stderr.decode().splitlines() == [
        "swapper: configuration error: FACE_SWAP_DEADLINE_SECONDS='soon' is not a number (allowed range [1, 86400])"]


@pytest.mark.parametrize("command", ["serve", "setup", "doctor"])
async def test_without_a_store_every_command_says_it_needs_one(base_env: dict[str, str], command: str) -> None:
    env = {k: v for k, v in process_env(base_env).items() if k != "S3_ENDPOINT_URL"}
    result = await asyncio.to_thread(subprocess.run, [sys.executable, "-m", "services.swapper", command],
                                     env=env, capture_output=True, timeout=30)
    assert result.returncode == 2
    assert result.stderr.decode().startswith("swapper: configuration error: S3_ENDPOINT_URL is required but not set")


async def test_doctor_command_swaps_the_photos_it_is_given(base_env: dict[str, str], tmp_path: Path) -> None:
    reference, target = write_samples(tmp_path)
    result = await asyncio.to_thread(
        subprocess.run, [sys.executable, "-m", "services.swapper", "doctor", "--reference", str(reference),
                         "--target", str(target)], env=process_env(base_env), capture_output=True, timeout=60)
    assert result.returncode == 0, result.stdout.decode() + result.stderr.decode()
    assert b"PASS swap: external_api 512x512" in result.stdout
    assert b"doctor: all 3 checks passed" in result.stdout


async def test_doctor_without_photos_skips_the_swap_and_says_so(base_env: dict[str, str],
                                                                 fake_runpod: FakeRunPod) -> None:
    code, output = await doctor(base_env, photos=False)
    assert code == 0, output
    assert "SKIP swap: no photos given (--reference FACE --target PHOTO)" in output
    assert "doctor: all 2 checks passed" in output
    assert fake_runpod.count("run") == 0


async def test_setup_command_prepares_the_bucket_and_exits(base_env: dict[str, str], bucket: str) -> None:
    result = await asyncio.to_thread(
        subprocess.run, [sys.executable, "-m", "services.swapper", "setup"],
        env=process_env(base_env, S3_MANAGE_LIFECYCLE="false"), capture_output=True, timeout=60)
    assert result.returncode == 0, result.stdout.decode() + result.stderr.decode()
    assert b"event=storage.setup_done" in result.stdout and b"lifecycle rules installed" in result.stdout
    settings = Settings.from_env(base_env)
    s3 = S3Bucket(settings.storage)
    rules = s3.client.get_bucket_lifecycle_configuration(Bucket=bucket)["Rules"]
    assert {rule["ID"] for rule in rules} == {"facegen-tmp", "facegen-refs"}, \
        "setup installs the rules even where the service itself leaves them alone"


async def test_setup_command_fails_clearly_without_a_bucket(base_env: dict[str, str], bucket: str) -> None:
    result = await asyncio.to_thread(
        subprocess.run, [sys.executable, "-m", "services.swapper", "setup"],
        env=process_env(base_env, S3_CREATE_BUCKET="false"), capture_output=True, timeout=60)
    assert result.returncode == 1
    assert f"bucket '{bucket}'".encode() in result.stdout and b"does not exist" in result.stdout
