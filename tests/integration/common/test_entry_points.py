"""``python -m services.<name>``: every service is started by the same runner and ends a bad setting alike."""

from __future__ import annotations

import asyncio
import os
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[3]
STORE = {"S3_ENDPOINT_URL": "http://127.0.0.1:1", "S3_ACCESS_KEY_ID": "k", "S3_SECRET_ACCESS_KEY": "s"}


async def run(name: str, argv: list[str], **env: str) -> tuple[int, str, str]:
    clean = {k: v for k, v in os.environ.items() if not k.endswith("LOG_LEVEL")}
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", f"services.{name}", *argv, cwd=ROOT,
        env={**clean, "PYTHONPATH": os.pathsep.join([str(ROOT), str(ROOT / "protos")]), **env},
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    stdout, stderr = await asyncio.wait_for(process.communicate(), 60)
    assert process.returncode is not None
    return process.returncode, stdout.decode(), stderr.decode()


@pytest.mark.parametrize("name", ["gateway", "generator", "swapper"])
async def test_a_bad_setting_is_one_line_on_stderr_and_exit_code_2(name: str) -> None:
    code, stdout, stderr = await run(name, [], LOG_LEVEL="loud", **(STORE if name == "swapper" else {}))
    assert code == 2
    assert stderr.splitlines() == [
        f"{name}: configuration error: LOG_LEVEL='loud' is not one of DEBUG, INFO, WARNING, ERROR"]
    assert stdout == ""


@pytest.mark.parametrize("name", ["gateway", "generator", "swapper"])
async def test_an_unknown_command_is_refused_before_anything_starts(name: str) -> None:
    code, _, stderr = await run(name, ["launch"])
    assert code == 2
    assert "invalid choice: 'launch'" in stderr
