"""Both clients against the real stack: the Node example, and one job seen alike from Node, Python and the CLI."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from facegen.v1 import gateway_pb2
from services.cli.main import EXIT_CANCELLED
from services.client import FacegenClient
from services.stack.launcher import LocalStack
from tests.integration.client.node import NODE_DIR, node_ready

pytestmark = pytest.mark.e2e

ROOT = NODE_DIR.parents[1]
Seen = list[tuple[int, str, str]]


def cli(stack: LocalStack) -> list[str]:
    """The `facegen` command pointed at the stack's gateway."""
    assert stack.addresses is not None
    return [sys.executable, "-m", "services.cli", "--gateway", stack.addresses.gateway]


def test_the_node_example_runs_a_template_job(stack: LocalStack) -> None:
    assert stack.addresses is not None
    run = subprocess.run([node_ready(), "clients/node/examples/run-job.mjs", "--gateway", stack.addresses.gateway],
                         cwd=ROOT, env={**os.environ, "FACEGEN_PYTHON": sys.executable},
                         capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, run.stdout + run.stderr
    assert "swapping" in run.stdout and "%]" in run.stdout, "progress is printed"
    assert ": COMPLETED" in run.stdout
    assert "face swap: external_api" in run.stdout


def test_a_job_submitted_from_node_is_watched_from_python_and_cancelled_from_the_cli(
        stack: LocalStack, face: bytes, template: bytes, runpod, tmp_path: Path) -> None:
    assert stack.addresses is not None
    (tmp_path / "face.jpg").write_bytes(face)
    (tmp_path / "target.png").write_bytes(template)
    runpod.faults(hang_rate=1.0)  # the remote swap waits until it is cancelled
    node_errors = tmp_path / "node.err"
    # stdout is read through one buffered reader to its end: communicate() would lose what the
    # readline() below read ahead (the first event, when Node wrote it with the job id).
    with node_errors.open("w") as errors:  # the child keeps its own copy of the file
        node = subprocess.Popen([node_ready(), "test/e2e/submit-and-watch.mjs", stack.addresses.gateway,
                                 str(tmp_path / "face.jpg"), str(tmp_path / "target.png")],
                                cwd=NODE_DIR, stdout=subprocess.PIPE, stderr=errors, text=True)
    try:
        assert node.stdout is not None
        job_id = json.loads(node.stdout.readline())["job_id"]
        from_python: Seen = []
        cancel = None
        with FacegenClient(stack.addresses.gateway) as client:
            for event in client.watch(job_id, timeout=120):
                from_python.append((event.seq, gateway_pb2.Stage.Name(event.stage), event.message))
                if event.HasField("remote") and cancel is None:
                    cancel = subprocess.run([*cli(stack), "cancel", job_id], capture_output=True, text=True,
                                            timeout=60)
        node_out = node.stdout.read()
        node.wait(timeout=60)
    finally:
        runpod.faults(hang_rate=0.0)
        if node.poll() is None:
            node.kill()
    assert node.returncode == 0, node_errors.read_text()
    assert cancel is not None and cancel.returncode == 0, cancel and cancel.stderr
    # Cancel answers the state once the job ended, or after 5 s still RUNNING (a loaded machine).
    assert cancel.stdout.strip() in ("JOB_STATE_CANCELLED", "JOB_STATE_RUNNING"), cancel.stdout
    from_node = [(int(line["seq"]), line["stage"], line["message"])
                 for line in map(json.loads, node_out.splitlines())]
    replay = subprocess.run([*cli(stack), "--json", "watch", job_id, "--no-download"], capture_output=True,
                            text=True, timeout=60)
    assert replay.returncode == EXIT_CANCELLED, replay.stdout + replay.stderr
    from_cli = [(int(event["seq"]), event["stage"], event.get("message", ""))
                for event in map(json.loads, replay.stdout.splitlines())]
    assert from_node == from_python == from_cli, f"node {from_node}\npython {from_python}\ncli {from_cli}"
    assert [seq for seq, _, _ in from_python] == list(range(1, len(from_python) + 1))
    assert from_python[-1][1] == "STAGE_TERMINAL"
    assert any(stage == "STAGE_SWAPPING" for _, stage, _ in from_python), "it was cancelled while swapping"
    assert "cancel" in from_python[-1][2].lower()
